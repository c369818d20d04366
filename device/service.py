"""The device service: pack + engine + audio output + the inputs that drive them.

:class:`Service` owns the running box. Inputs -- the hardware control loop, MIDI ports, the
simulators -- are *parts*: objects with ``start()`` and ``stop()`` that call the engine's entry
points (``engine.note_on``, ``controls.set_touch``, ``corners.select``...). They are added with
:meth:`Service.add` and started and stopped with the service, in order.

Audio goes to a PyAudio stream when an output exists; otherwise (a laptop without a sound
card, CI) to :class:`PacedNullOutput`, which calls the same render function at the real block
rate, so everything downstream behaves as on the box.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from device.corners import CornerSelector, instrument_names
from device.engine import Engine, EngineConfig
from device.pack import DEFAULT_PACK, grid_from_pack, load_pack

log = logging.getLogger("morphbox")


class PacedNullOutput:
    """Renders blocks at the real-time rate into nothing; same ``stats`` as AudioStream.

    For running the whole service where no audio output exists.
    """

    def __init__(self, render_block, sample_rate: int, block_size: int):
        from device.audio import AudioStats
        self._render = render_block
        self._period = block_size / sample_rate
        self._stats = AudioStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.device_name = "none (paced null output)"

    @property
    def stats(self):
        from dataclasses import replace
        return replace(self._stats)

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="null-audio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self._render()
            except Exception:  # noqa: BLE001 - the audio never stops
                self._stats.errors += 1
            dt = time.perf_counter() - t0
            self._stats.blocks += 1
            self._stats.max_render_s = max(self._stats.max_render_s, dt)
            if dt > self._period:
                self._stats.late_blocks += 1
            next_t += self._period
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -0.1:  # fell far behind: resynchronise instead of bursting
                self._stats.xruns += 1
                next_t = time.perf_counter()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    close = stop


@dataclass
class ServiceConfig:
    """What to run. ``audio``: "auto" (a device if one exists, else paced null output),
    "device" (must exist) or "none" (paced null output)."""

    pack: Path = DEFAULT_PACK
    engine: EngineConfig = field(default_factory=EngineConfig)
    audio: str = "auto"
    device: str | int | None = None
    host_api: str | None = None


class Service:
    """The running box. Raises :class:`device.pack.PackError` if the pack cannot be loaded
    and :class:`device.audio.AudioError` if ``audio="device"`` and none exists."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = cfg = config or ServiceConfig()
        self.pack = load_pack(cfg.pack)
        self.engine = Engine(grid_from_pack(self.pack), cfg.engine)
        self.controls = self.engine.controls
        self.corners = CornerSelector(self.engine, self.pack, on_change=self._corners_changed)
        self.output = self._open_output()
        self._parts: list = []
        self._running = False

    def _open_output(self):
        cfg = self.config
        e = cfg.engine
        if cfg.audio != "none":
            from device.audio import AudioStream
            if cfg.audio == "device" or AudioStream.available(cfg.host_api):
                return AudioStream(self.engine.render_block, sample_rate=e.sample_rate,
                                   block_size=e.block_size, channels=e.channels,
                                   device=cfg.device, host_api=cfg.host_api)
            log.warning("no audio output found: rendering to a paced null output")
        return PacedNullOutput(self.engine.render_block, e.sample_rate, e.block_size)

    def _corners_changed(self, corners: dict, seconds: float) -> None:
        log.info("corners now %s (grid rebuilt in %.0f ms)",
                 instrument_names(self.pack, corners), seconds * 1000)

    def add(self, part):
        """Add an input part (``start()``/``stop()``); started now if the service runs."""
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
        self.engine.all_sound_off()
        time.sleep(0.02)
        self.output.close()

    def status(self) -> dict:
        """What the box is doing, for logs, the OLED and the HTTP API."""
        st = self.output.stats
        return {"pack": self.pack.name,
                "corners": instrument_names(self.pack, self.corners.corners),
                "voices": self.engine.active_voices, "audio_device": self.output.device_name,
                "blocks": st.blocks, "late_blocks": st.late_blocks, "xruns": st.xruns,
                "errors": st.errors}

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


class ThreadPart:
    """A service part that runs :meth:`loop` on its own daemon thread until stopped.

    Subclasses implement ``loop()`` and wait with ``self._stop.wait(seconds)`` (True: stop).
    """

    name = "part"

    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)


class TouchPathPart(ThreadPart):
    """Simulated touch: follows a :class:`device.sim.TouchPath` at ``rate`` Hz."""

    name = "sim-touch"

    def __init__(self, controls, path, rate: float = 200.0):
        super().__init__()
        self.controls, self.path, self.rate = controls, path, rate

    def loop(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(1.0 / self.rate):
            self.controls.set_touch(*self.path(time.perf_counter() - t0))


class MidiFilePart(ThreadPart):
    """Simulated MIDI input: plays a file's messages in real time through
    :func:`device.midi.dispatch`, looping if ``loop``."""

    name = "sim-midi"

    def __init__(self, engine, events: list, loop: bool = False):
        super().__init__()
        self.engine, self.events, self.repeat = engine, events, loop

    def loop(self) -> None:
        from device.midi import dispatch
        while True:
            t0 = time.perf_counter()
            for when, msg in self.events:
                if self._stop.wait(max(0.0, when - (time.perf_counter() - t0))):
                    return
                dispatch(self.engine, msg)
            if not self.repeat or self._stop.wait(1.0):
                return

    def stop(self) -> None:
        super().stop()
        self.engine.all_notes_off()
