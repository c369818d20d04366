"""Patches: corners + ADSR + volume + morph position and mode, in 4 slots as on the original box.

Each slot is a JSON file ``patch-<slot>.json`` (slot 1..4) in the state directory:
``MORPHBOX_STATE_DIR``, else ``~/.local/state/morphbox`` (``/var/lib/morphbox`` on the Pi, set
by the unit file). Files are written with :func:`morphbox.device.common.atomic_write`: a
power cut leaves the old patch or the new one.

Fields added later have defaults, so older patch files load unchanged: ``x``/``y`` (0.5) and
``morph_mode`` (``follow``, the only mode before it existed).

Owns: the patch file format. Imports: :mod:`morphbox.device.common`,
:mod:`morphbox.device.engine.controls` (the morph modes), :mod:`morphbox.kernels`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from morphbox.device.common import atomic_write, state_dir
from morphbox.device.engine.controls import MORPH_MODES
from morphbox.kernels.grid import CORNERS

SLOTS = 4


class PatchError(ValueError):
    """A patch or slot is invalid, or a patch file cannot be read or written."""


@dataclass(frozen=True)
class Patch:
    """``corners``: ``{"NW": instrument index, ...}``; ADSR in seconds (sustain 0..1);
    ``volume`` 0..1; morph position ``x``, ``y`` 0..1; ``morph_mode`` ``follow``, ``latch``
    or ``mpe`` (:data:`morphbox.device.engine.controls.MORPH_MODES`)."""

    corners: dict
    attack_s: float
    decay_s: float
    sustain: float
    release_s: float
    volume: float
    x: float = 0.5
    y: float = 0.5
    morph_mode: str = "follow"

    @classmethod
    def from_dict(cls, d: dict) -> Patch:
        """Validated patch from parsed JSON; PatchError naming the bad field."""
        if not isinstance(d, dict):
            raise PatchError(f"a patch is a JSON object, got {type(d).__name__}")
        corners = d.get("corners")
        if not isinstance(corners, dict) or sorted(corners) != sorted(CORNERS) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in corners.values()):
            raise PatchError(f"patch corners must map {', '.join(CORNERS)} to instrument "
                             f"indices >= 0, got {corners!r}")
        vals = {}
        for name, lo, hi in (("attack_s", 0, 60), ("decay_s", 0, 60), ("sustain", 0, 1),
                             ("release_s", 0, 60), ("volume", 0, 1), ("x", 0, 1), ("y", 0, 1)):
            v = d.get(name, 0.5 if name in ("x", "y") else None)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise PatchError(f"patch field {name!r} must be a number in {lo}..{hi}, got {v!r}")
            vals[name] = float(v)
        mode = d.get("morph_mode", "follow")
        if mode not in MORPH_MODES:
            raise PatchError(f"patch field 'morph_mode' must be one of "
                             f"{', '.join(MORPH_MODES)}, got {mode!r}")
        return cls(corners={c: int(corners[c]) for c in CORNERS}, morph_mode=mode, **vals)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_slot(slot: int) -> int:
    if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= SLOTS:
        raise PatchError(f"patch slot must be 1..{SLOTS}, got {slot!r}")
    return slot


class PatchStore:
    """Patch slots in ``directory`` (default :func:`state_dir`), created when first saved."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else state_dir()

    def path(self, slot: int) -> Path:
        return self.directory / f"patch-{_check_slot(slot)}.json"

    def save(self, slot: int, patch: Patch) -> Path:
        """Write ``patch`` to ``slot`` atomically. PatchError if the directory is not writable
        (the old patch is left as it was)."""
        path = self.path(slot)
        data = json.dumps(patch.to_dict(), indent=1, sort_keys=True).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            raise PatchError(f"cannot save patch {slot} to {path}: {exc}") from exc
        return path

    def load(self, slot: int) -> Patch | None:
        """The patch in ``slot``, or None if the slot is empty. PatchError if the file is
        unreadable or invalid (the file is left alone)."""
        path = self.path(slot)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PatchError(f"cannot read patch {slot} from {path}: {exc}") from exc
        try:
            return Patch.from_dict(json.loads(text))
        except (json.JSONDecodeError, PatchError) as exc:
            raise PatchError(f"patch file {path} is invalid: {exc}") from exc
