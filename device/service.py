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
function at the real block rate. On the box the engine and that output run in an audio process
of their own (:class:`morphbox.device.engine.process.AudioProcess`, real-time priority,
``ServiceConfig.audio_process``): ``service.engine`` is then its front, with the engine's API.

Imports: every device sub-package (this is the top of the device layer).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from morphbox.device.common import ThreadPart, monotonic, state_dir
from morphbox.device.engine.audio import PacedNullOutput
from morphbox.device.engine.compiled import CACHE_SUBDIR, engine_status, use_cache_dir
from morphbox.device.engine.corners import CornerSelector, instrument_names
from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.midi.recorder import Recorder
from morphbox.device.packs.format import (
    DEFAULT_PACK,
    Grid,
    Pack,
    PackError,
    grid_from_pack,
    load_pack,
)
from morphbox.device.packs.patches import SLOTS, Patch, PatchError, PatchStore
from morphbox.device.packs.store import (
    BUILTIN,
    DEFAULT_RECORDINGS_CAP_BYTES,
    Activation,
    PackStore,
    StoreError,
    prune_recordings,
)

log = logging.getLogger("morphbox")


# ---- the sound check: a pack proves it plays before it is accepted ----------------------------

#: Where the sound check plays: the four corners and the centre (x, y).
PROBE_POINTS = {"NW": (0.0, 0.0), "NE": (1.0, 0.0), "SW": (0.0, 1.0), "SE": (1.0, 1.0),
                "centre": (0.5, 0.5)}
PROBE_BLOCKS = 12  # blocks per point (32 ms at 128 frames, 48 kHz)
PROBE_SILENT = 1e-5  # peak below this (-100 dBFS) at a point: silent


class SoundCheckError(ValueError):
    """A pack's grid failed the sound check (non-finite, failing or silent output)."""


def sound_check(grid: Grid, config: EngineConfig | None = None) -> dict[str, float]:
    """Prove that ``grid`` plays: render, with a private :class:`Engine` (never the live one;
    call this off the audio thread), three notes across its range (lowest, middle and highest
    pitch anchor) at each of :data:`PROBE_POINTS`, from the onset and once more at the centre
    from the sustain loop. Returns the peak level per point (linear). Raises
    :class:`SoundCheckError` naming the point if the render raises, comes out non-finite, or
    is silent (peak below :data:`PROBE_SILENT`). Costs about 100 blocks (~30 ms here)."""
    cfg = replace(config or EngineConfig(), channels=1, max_voices=4, fade_voices=2,
                  morph_smoothing_s=1e-4)  # the morph jumps straight to each point
    with np.errstate(all="ignore"):  # what goes wrong is judged from the output below
        return _sound_check(grid, cfg)


def _sound_check(grid: Grid, cfg: EngineConfig) -> dict[str, float]:
    try:
        engine = Engine(grid, cfg)
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the pack is refused
        raise SoundCheckError(f"sound check: the engine cannot play this grid: {exc}") \
            from None
    c = engine.controls
    c.set_adsr(attack_s=0.002, decay_s=0.05, sustain=0.7, release_s=0.01)
    c.set_volume(1.0)
    anchors = [int(a) for a in grid.anchors]
    notes = sorted({anchors[0], anchors[len(anchors) // 2], anchors[-1]})
    peaks = {}
    runs = [(name, xy, 0.0) for name, xy in PROBE_POINTS.items()] + [
        ("centre, sustain loop", PROBE_POINTS["centre"], 1.0)]
    for name, (x, y), position in runs:
        c.set_touch(x, y)
        c.set_position(position)
        for n in notes:
            engine.note_on(min(max(n, 0), 127), 100)
        peak = 0.0
        try:
            for _ in range(PROBE_BLOCKS):
                out = engine.render_block()
                if engine.nonfinite_blocks or not np.isfinite(out).all():
                    raise SoundCheckError(f"sound check: non-finite output at {name} "
                                          f"(notes {notes})")
                peak = max(peak, float(np.abs(out).max()))
            engine.all_sound_off()
            for _ in range(4):
                engine.render_block()
        except SoundCheckError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SoundCheckError(f"sound check: rendering failed at {name} (notes {notes}): "
                                  f"{type(exc).__name__}: {exc}") from None
        if peak < PROBE_SILENT:
            raise SoundCheckError(f"sound check: silent at {name} (notes {notes}, peak "
                                  f"{peak:.1e})")
        peaks[name] = peak
    return peaks


class PackWatchdog(ThreadPart):
    """Watches the audio after every pack switch (and after start) for ``watch_s`` seconds:
    if ``max_bad`` or more blocks fail to render (the output's ``errors``) or come out
    non-finite (:attr:`Engine.nonfinite_blocks`), the service rolls back to the pack before
    (:meth:`Service.roll_back`) and logs why. Also stops a recording when the disk is down to
    the store's reserve.

    :meth:`check` is one step at time ``now`` (seconds, ``clock``): tests call it directly;
    as a service part, :meth:`loop` calls it every ``period_s``.
    """

    name = "pack-watchdog"

    def __init__(self, service: Service, clock=monotonic, watch_s: float = 30.0,
                 max_bad: int = 3, period_s: float = 0.25):
        super().__init__()
        self.service, self.clock = service, clock
        self.watch_s, self.max_bad, self.period_s = watch_s, max_bad, period_s
        self.until: float | None = None
        self.baseline = 0
        self.watched: Pack | None = None  # the pack on probation
        self.rollbacks: list[str] = []  # what it did, for logs and tests

    def bad_blocks(self) -> int:
        """Blocks so far that failed to render or came out non-finite."""
        return (self.service.output.stats.errors
                + getattr(self.service.engine, "nonfinite_blocks", 0))

    def arm(self, now: float | None = None) -> None:
        """Start watching (a pack was switched in)."""
        self.baseline = self.bad_blocks()
        self.watched = self.service.pack
        self.until = (self.clock() if now is None else now) + self.watch_s

    def check(self, now: float) -> str | None:
        """One step: roll back if the pack being watched broke the audio; returns what was
        done (or None)."""
        done = None
        if self.until is not None:
            bad = self.bad_blocks() - self.baseline
            if bad >= self.max_bad:
                self.until = None
                done = self.service.roll_back(f"{bad} audio blocks failed or came out "
                                              "non-finite after the switch", self.watched)
                self.rollbacks.append(done)
            elif now > self.until:
                self.until = None
        self.service.check_disk(now)
        return done

    def loop(self) -> None:
        while not self.wait(self.period_s):
            self.check(self.clock())


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
        audio_process: "yes" (render in an audio process of its own), "no" (in this process)
            or "auto": yes on a Raspberry Pi, no elsewhere; ``$MORPHBOX_AUDIO_PROCESS``
            (yes/no) overrides "auto".
        rt_priority: SCHED_FIFO priority the audio process asks for (0: normal scheduling).
        recordings_cap_bytes: most the recordings may take; the oldest are deleted past it
            (None: the store's, ``$MORPHBOX_RECORDINGS_CAP_MB``, default 1024 MB).
        watch_s: seconds the audio is watched after a pack switch (:class:`PackWatchdog`).
    """

    pack: Path | str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    audio: str = "auto"
    device: str | int | None = None
    host_api: str | None = None
    state_dir: Path | str | None = None
    store: bool = False
    audio_process: str = "auto"
    rt_priority: int = 70
    recordings_cap_bytes: int | None = None
    watch_s: float = 30.0


def use_audio_process(setting: str = "auto") -> bool:
    """Resolve ``ServiceConfig.audio_process`` ("yes", "no", "auto"; see there)."""
    import os
    if setting not in ("auto", "yes", "no"):
        raise ValueError(f"audio_process must be auto, yes or no, not {setting!r}")
    if setting == "auto":
        setting = os.environ.get("MORPHBOX_AUDIO_PROCESS", "auto").strip().lower()
    if setting in ("yes", "no"):
        return setting == "yes"
    try:
        return "raspberry pi" in Path("/proc/device-tree/model").read_text().lower()
    except OSError:
        return False


class Service:
    """The running box. Raises :class:`morphbox.device.packs.format.PackError` if the pack
    cannot be loaded and :class:`morphbox.device.engine.audio.AudioError` if
    ``audio="device"`` and none exists.

    With a store (``ServiceConfig.store``) it always starts: a pack that fails to load or
    fails the :func:`sound_check` for any reason is skipped for the previous one, then the
    built-in one (:meth:`PackStore.startup`), each step logged."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = cfg = config or ServiceConfig()
        self.state_dir = state_dir(cfg.state_dir)
        self.store = PackStore(self.state_dir) if cfg.store else None
        self._proven: tuple[Pack, Grid] | None = None
        # numba keeps the compiled render kernel in the state dir: a reboot loads it. Before
        # the sound check builds the first engine, so that it fills (or loads) that cache and
        # the audio process, which inherits the variable, loads from it instead of compiling
        use_cache_dir(self.state_dir / CACHE_SUBDIR)
        self.pack = self._startup_pack()
        grid = self._proven[1] if self._proven and self._proven[0] is self.pack else \
            grid_from_pack(self.pack)
        self._proven = None
        self.audio_process = None
        if use_audio_process(cfg.audio_process):
            from morphbox.device.engine.process import AudioProcess, AudioProcessConfig
            self.audio_process = self.engine = AudioProcess(
                grid, cfg.engine, AudioProcessConfig(
                    output=cfg.audio, device=cfg.device, host_api=cfg.host_api,
                    rt_priority=cfg.rt_priority))
            self.engine.restart_listeners.append(lambda: self.say("audio restarted"))
        else:
            self.engine = Engine(grid, cfg.engine)
        self.controls = self.engine.controls
        self.corners = CornerSelector(self.engine, self.pack, on_change=self._corners_changed)
        self.patches = PatchStore(self.state_dir)
        self.recorder = Recorder(self.engine, self.state_dir / "recordings")
        self.output = self.audio_process or self._open_output()
        #: ``f(text)`` callables shown what the box did (the OLED's message line).
        self.message_listeners: list[Callable[[str], None]] = []
        self._parts: list = []
        self._running = False
        # the pack to go back to if the one playing breaks the audio (a path; reloaded then)
        self._fallback: Path | None = None
        if self.store is not None:
            ptr = self.store.pointer()
            prev = ptr.get("previous")
            self._fallback = self._path_of(prev) if prev else None
        self.watchdog = PackWatchdog(self, watch_s=cfg.watch_s)
        self._parts.append(self.watchdog)

    def _prove(self, pack: Pack) -> Grid:
        """Build ``pack``'s grid and :func:`sound_check` it; raises ``SoundCheckError``."""
        grid = grid_from_pack(pack)
        sound_check(grid, self.config.engine)
        self._proven = (pack, grid)
        return grid

    def _startup_pack(self) -> Pack:
        if self.config.pack is not None:
            pack = load_pack(self.config.pack)
        elif self.store is not None:
            return self.store.startup(check=self._prove)[1]
        else:
            pack = load_pack(DEFAULT_PACK)
        try:
            self._prove(pack)
        except SoundCheckError as exc:
            raise PackError(f"{pack.path}: {exc}") from None
        return pack

    def _path_of(self, pid: str | None) -> Path | None:
        try:
            return self.store.pack_path(pid) if self.store and pid else None
        except StoreError:
            return None

    def _id_of(self, pack: Pack) -> str | None:
        """The store's id of ``pack`` (None: not from the store)."""
        if self.store is None:
            return None
        if Path(pack.path).resolve() == self.store.builtin.resolve():
            return BUILTIN
        if Path(pack.path).parent.resolve() == self.store.packs_dir.resolve():
            return Path(pack.path).name
        return None

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

    def switch_pack(self, pack: Pack, watch: bool = True) -> None:
        """Play ``pack`` (already loaded and verified) from the next block on, with its own
        corner choice, once its grid passed the :func:`sound_check` (off the audio thread,
        on a private engine). Raises ``ValueError`` (:class:`SoundCheckError`, or it does not
        fit the engine; nothing changed then). ``watch``: the :class:`PackWatchdog` watches
        the audio afterwards and rolls back to the pack playing before if it breaks."""
        grid = self._prove(pack)
        self._proven = None
        previous = self.pack
        # swaps the grid (raises before anything changed) and drops any rebuild from the old
        # pack, under the selector's lock
        self.corners.set_pack(pack, grid)
        self.pack = pack
        if watch:
            self._fallback = Path(previous.path)
            self.watchdog.arm()

    def roll_back(self, reason: str, failed: Pack | None = None) -> str:
        """The pack playing (``failed``, if given: only if it still plays) broke the audio
        (the watchdog saw it): go back to the pack played before it, else the built-in one,
        and log why. Runs under the store's lock, so an activation cannot interleave. Returns
        what was done."""
        with self.store.lock if self.store is not None else contextlib.nullcontext():
            if failed is not None and failed is not self.pack:
                return "the pack changed meanwhile: nothing rolled back"
            return self._roll_back(reason)

    def _roll_back(self, reason: str) -> str:
        failed = self.pack
        failed_id = self._id_of(failed) or str(failed.path)
        self.engine.all_sound_off()
        here = Path(failed.path).resolve()
        for path in dict.fromkeys(p for p in (self._fallback, DEFAULT_PACK)
                                  if p is not None and Path(p).resolve() != here):
            try:
                pack = load_pack(path)
                self.switch_pack(pack, watch=False)
            except Exception as exc:  # noqa: BLE001 - try the next one
                log.error("rollback to %s failed: %s", path, exc)
                continue
            to_id = self._id_of(pack) or str(pack.path)
            if self.store is not None:
                self.store.record_rollback(failed_id, to_id, reason)
            self._fallback = None
            text = (f"pack {failed_id} broke the audio ({reason}): rolled back to {to_id}")
            log.error("%s", text)
            self.say(f"pack failed, back to {pack.name}")
            return text
        text = f"pack {failed_id} broke the audio ({reason}) and no other pack could play"
        log.error("%s", text)
        return text

    def check_disk(self, now: float | None = None) -> None:
        """While recording: every 10 s delete the oldest recordings past the cap (never the
        running one), and stop the recording when the state filesystem is down to the
        store's reserve."""
        if not self.recorder.recording:
            return
        now = monotonic() if now is None else now
        if now - getattr(self, "_pruned_at", -1e9) >= 10.0:
            self._pruned_at = now
            prune_recordings(self.recorder.directory, self._recordings_cap(), keep=1)
        if self.store is not None and self.store.free_bytes() < 0:
            log.error("the disk is full (%s): recording stopped", self.state_dir)
            self.stop_recording()
            self.say("disk full: recording stopped")

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

    def _recordings_cap(self) -> int:
        cap = self.config.recordings_cap_bytes
        if cap is None:
            cap = self.store.recordings_cap_bytes if self.store else DEFAULT_RECORDINGS_CAP_BYTES
        return cap

    def start_recording(self, name: str | None = None) -> dict:
        """Start recording MIDI, morph and audio (:class:`Recorder`); returns the status.
        The oldest recordings past the cap are deleted first; raises ``OSError`` (ENOSPC) if
        the disk is down to the store's reserve."""
        if not self.recorder.recording:
            prune_recordings(self.recorder.directory, self._recordings_cap(), keep=0)
        if self.store is not None and self.store.free_bytes() < 0:
            raise OSError(errno.ENOSPC, "the disk is full: delete packs or recordings")
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
        self.watchdog.arm()  # the pack we started with is watched too
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
                "errors": st.errors, "max_render_ms": round(st.max_render_s * 1000, 3),
                "recording": self.recorder.recording,
                "morph_mode": self.controls.snapshot.morph_mode,
                "engine": (self.audio_process.engine_status() if self.audio_process
                           else engine_status(self.engine)),
                "audio_process": self.audio_process.info() if self.audio_process else None}

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
