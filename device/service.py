"""The running box: one object that owns its state and the operations on it.

:class:`Service` owns the pack, the engine and its controls, the corner choice, the pack store,
the patches and the recorder, and the audio output. Everything that changes the box goes
through its operations, whichever input asked -- the HTTP API, MIDI (program change, the corner
and record CCs), the panel (encoders, patch buttons) or the CLI (through the API):

* :meth:`Service.activate_pack` / :meth:`Service.switch_pack` -- play another pack;
* :meth:`Service.select_corners` / :meth:`Service.step_corner` -- choose the corner
  instruments (the grid is rebuilt in the background);
* :meth:`Service.save_patch` / :meth:`Service.recall_patch` (and
  :meth:`Service.on_program_change`, MIDI program 0..3 -> patch 1..4);
* :meth:`Service.start_recording` / :meth:`Service.stop_recording` /
  :meth:`Service.toggle_recording`.

Inputs -- the panel's control loop, MIDI router and ports, the API, the simulators -- are
*parts*: objects with ``start()`` and ``stop()`` (most are
:class:`morphbox.device.common.ThreadPart`), added with :meth:`Service.add` and started and
stopped with the service, in order. :mod:`morphbox.device.main` builds a service from a
hardware profile and options (``python -m morphbox.device``).

Audio goes to a PyAudio stream when an output exists; otherwise (a laptop without a sound
card, CI) to :class:`morphbox.device.engine.audio.PacedNullOutput`, which calls the same render
function at the real block rate.

Imports: every device sub-package (this is the top of the device layer).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from morphbox.device.common import state_dir
from morphbox.device.engine.audio import PacedNullOutput
from morphbox.device.engine.compiled import CACHE_SUBDIR, engine_status, use_cache_dir
from morphbox.device.engine.corners import CornerSelector, instrument_names
from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.midi.recorder import Recorder
from morphbox.device.packs.format import Pack, grid_from_pack, load_pack
from morphbox.device.packs.patches import SLOTS, Patch, PatchError, PatchStore
from morphbox.device.packs.store import Activation, PackStore

log = logging.getLogger("morphbox")


@dataclass
class ServiceConfig:
    """What to run.

    Attributes:
        pack: pack directory to play; None: the store's active pack (with its fallbacks), or
            the shipped pack when the service has no store.
        engine: :class:`EngineConfig`.
        audio: "auto" (a device if one exists, else paced null output), "device" (must
            exist) or "none" (paced null output).
        device, host_api: the audio output (index or name part; PortAudio host API).
        state_dir: packs, keys, token, patches, recordings (default
            :func:`morphbox.device.common.state_dir`).
        store: keep installed packs in the state dir (:class:`PackStore`); needed by the API.
    """

    pack: Path | str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    audio: str = "auto"
    device: str | int | None = None
    host_api: str | None = None
    state_dir: Path | str | None = None
    store: bool = False


class Service:
    """The running box. Raises :class:`morphbox.device.packs.format.PackError` if the pack
    cannot be loaded and :class:`morphbox.device.engine.audio.AudioError` if
    ``audio="device"`` and none exists."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = cfg = config or ServiceConfig()
        self.state_dir = state_dir(cfg.state_dir)
        self.store = PackStore(self.state_dir) if cfg.store else None
        self.pack = self._startup_pack()
        # numba keeps the compiled render kernel in the state dir: a reboot loads it
        use_cache_dir(self.state_dir / CACHE_SUBDIR)
        self.engine = Engine(grid_from_pack(self.pack), cfg.engine)
        self.controls = self.engine.controls
        self.corners = CornerSelector(self.engine, self.pack, on_change=self._corners_changed)
        self.patches = PatchStore(self.state_dir)
        self.recorder = Recorder(self.engine, self.state_dir / "recordings")
        self.output = self._open_output()
        #: ``f(text)`` callables shown what the box did (the OLED's message line).
        self.message_listeners: list[Callable[[str], None]] = []
        self._parts: list = []
        self._running = False

    def _startup_pack(self) -> Pack:
        if self.config.pack is not None:
            return load_pack(self.config.pack)
        if self.store is not None:
            return self.store.startup()[1]
        from morphbox.device.packs.format import DEFAULT_PACK
        return load_pack(DEFAULT_PACK)

    def _open_output(self):
        cfg = self.config
        e = cfg.engine
        if cfg.audio != "none":
            from morphbox.device.engine.audio import AudioStream
            if cfg.audio == "device" or AudioStream.available(cfg.host_api):
                return AudioStream(self.engine.render_block, sample_rate=e.sample_rate,
                                   block_size=e.block_size, channels=e.channels,
                                   device=cfg.device, host_api=cfg.host_api)
            log.warning("no audio output found: rendering to a paced null output")
        return PacedNullOutput(self.engine.render_block, e.sample_rate, e.block_size)

    def say(self, text: str) -> None:
        """Log ``text`` and show it to the message listeners (the OLED)."""
        log.info("%s", text)
        for f in self.message_listeners:
            try:
                f(text)
            except Exception:  # noqa: BLE001 - a display never stops an operation
                log.exception("message listener %r", f)

    # ---- operations: packs and corners ---------------------------------------------------------

    def switch_pack(self, pack: Pack) -> None:
        """Play ``pack`` (already loaded and verified) from the next block on, with its own
        corner choice. Raises ``ValueError`` (nothing changed) if it does not fit the engine."""
        grid = grid_from_pack(pack)
        # swaps the grid (raises before anything changed) and drops any rebuild from the old
        # pack, under the selector's lock
        self.corners.set_pack(pack, grid)
        self.pack = pack

    def activate_pack(self, pid: str) -> Activation:
        """Make installed pack ``pid`` active and play it (:meth:`PackStore.activate`).
        Raises :class:`morphbox.device.packs.store.StoreError`; the old pack plays on then."""
        if self.store is None:
            raise RuntimeError("this service keeps no pack store (ServiceConfig.store)")
        return self.store.activate(pid, apply=self.switch_pack)

    def _corners_changed(self, corners: dict, seconds: float) -> None:
        log.info("corners now %s (grid rebuilt in %.0f ms)",
                 instrument_names(self.pack, corners), seconds * 1000)

    def select_corners(self, corners: dict[str, int]) -> None:
        """Ask for corner instruments (``{"NW": index, ...}``, any subset); the grid is rebuilt
        in the background and swapped in at a block boundary."""
        self.corners.select(corners)

    def step_corner(self, corner: str, delta: int) -> str:
        """Move ``corner`` ``delta`` instruments on (an encoder turn); returns the name of the
        instrument it is heading to."""
        self.corners.step(corner, delta)
        return self.pack.instrument_names[self.corners.target[corner]]

    # ---- operations: patches ------------------------------------------------------------------

    def save_patch(self, slot: int) -> Patch:
        """Store the corners, ADSR, volume, morph position and morph mode in ``slot``
        (1..4). Raises :class:`PatchError` (the old patch stays)."""
        s = self.controls.snapshot
        patch = Patch(corners=dict(self.corners.corners), attack_s=s.attack_s,
                      decay_s=s.decay_s, sustain=s.sustain, release_s=s.release_s,
                      volume=s.volume, x=s.x, y=s.y, morph_mode=s.morph_mode)
        try:
            self.patches.save(slot, patch)
        except PatchError:
            self.say(f"save {slot} failed")
            raise
        self.say(f"saved patch {slot}")
        return patch

    def recall_patch(self, slot: int) -> Patch:
        """Apply the patch in ``slot`` (1..4): corners, ADSR, volume, morph position and mode.
        Raises :class:`PatchError` if the slot is empty, unreadable or made for another pack
        (nothing changes then)."""
        try:
            patch = self.patches.load(slot)
        except PatchError:
            self.say(f"patch {slot} unreadable")
            raise
        if patch is None:
            self.say(f"patch {slot} empty")
            raise PatchError(f"patch slot {slot} is empty")
        n = len(self.pack.instrument_names)
        if any(i >= n for i in patch.corners.values()):
            self.say(f"patch {slot}: not this pack")
            raise PatchError(f"patch {slot} names instruments this pack ({n}) does not have")
        c = self.controls
        self.corners.select(patch.corners)
        c.set_adsr(attack_s=patch.attack_s, decay_s=patch.decay_s, sustain=patch.sustain,
                   release_s=patch.release_s)
        c.set_volume(patch.volume)
        c.set_touch(patch.x, patch.y, touching=c.snapshot.touching)
        c.set_morph_mode(patch.morph_mode)
        self.say(f"recalled patch {slot}")
        return patch

    def on_program_change(self, program: int) -> Patch | None:
        """MIDI program change: programs 0..3 recall patches 1..4; others are ignored."""
        if not 0 <= program < SLOTS:
            log.info("program change %d: no patch (programs 0..%d recall patches 1..%d)",
                     program, SLOTS - 1, SLOTS)
            return None
        try:
            return self.recall_patch(program + 1)
        except PatchError as exc:
            log.warning("program change %d: %s", program, exc)
            return None

    # ---- operations: recording ----------------------------------------------------------------

    def start_recording(self, name: str | None = None) -> dict:
        """Start recording MIDI, morph and audio (:class:`Recorder`); returns the status."""
        self.recorder.start_recording(name)
        return self.recorder.status()

    def stop_recording(self) -> dict:
        """Stop recording (nothing if idle); returns the status with the finished files."""
        self.recorder.stop_recording()
        return self.recorder.status()

    def toggle_recording(self) -> dict:
        self.recorder.toggle()
        return self.recorder.status()

    # ---- life cycle -----------------------------------------------------------------------------

    def add(self, part):
        """Add a part (``start()``/``stop()``); started now if the service runs."""
        self._parts.append(part)
        if self._running:
            part.start()
        return part

    def start(self) -> None:
        self.output.start()
        for part in self._parts:
            part.start()
        self._running = True

    def stop(self) -> None:
        self._running = False
        for part in reversed(self._parts):
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stopping one part must not strand the rest
                log.exception("stopping %r", part)
        try:
            self.recorder.stop_recording()
        except Exception:  # noqa: BLE001
            log.exception("stopping the recorder")
        self.engine.all_sound_off()
        time.sleep(0.02)  # let the fade-out reach the output before it closes
        self.output.close()

    def status(self) -> dict:
        """What the box is doing, for logs, the OLED and the HTTP API."""
        st = self.output.stats
        return {"pack": self.pack.name,
                "corners": instrument_names(self.pack, self.corners.corners),
                "voices": self.engine.active_voices, "audio_device": self.output.device_name,
                "blocks": st.blocks, "late_blocks": st.late_blocks, "xruns": st.xruns,
                "errors": st.errors, "recording": self.recorder.recording,
                "engine": engine_status(self.engine)}

    def run(self, seconds: float | None = None) -> dict:
        """Start, run until ``seconds`` pass or SIGINT/SIGTERM, stop; returns the status."""
        done = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: done.set())
        self.start()
        try:
            done.wait(seconds)
        finally:
            status = self.status()
            self.stop()
        return status
