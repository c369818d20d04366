"""Laptop side of morphbox: source notes, analysis, pack building, demo, CLI."""

try:
    from importlib.metadata import version as _version

    __version__ = _version("morphbox")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.1.0"
