"""The box's HTTP API and web page (:mod:`~morphbox.device.api.server`, aiohttp on its own
thread): status, pack upload/activation/deletion, key pairing, recordings.

Imports :mod:`morphbox.device.packs` and :mod:`morphbox.device.common`; acts on the running box
only through the service's operations.
"""
