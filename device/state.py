"""Where the box keeps its state: packs, keys, token, patches, recordings.

One rule for every part of the service: ``$MORPHBOX_STATE_DIR``, else
``$XDG_STATE_HOME/morphbox``, else ``~/.local/state/morphbox``. On the Pi the systemd unit sets
``MORPHBOX_STATE_DIR=/var/lib/morphbox`` so the root filesystem can stay read-only.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The state directory (not created here)."""
    env = os.environ.get("MORPHBOX_STATE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "morphbox"
