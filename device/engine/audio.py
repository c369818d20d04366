"""Live audio output: a PortAudio (PyAudio) callback stream fed by a block renderer.

This module is pure infrastructure. The synthesis engine is passed in as ``render_block``, a
zero-argument callable returning one block of float32 audio of shape ``(block_size, channels)``
with values in -1..1. :class:`AudioStream` opens a callback-mode output stream and calls it once
per block from PortAudio's audio thread.

Real-time rules for the callback (``_BlockCallback.__call__``): no locks, no I/O, no logging, and
no per-block allocation beyond what Python itself needs (the call's arguments, two
``perf_counter`` floats). Everything else is precomputed:

* the rendered block is copied into a preallocated float32 buffer, and that *ndarray itself* is
  returned to PyAudio, in a preallocated ``(buffer, paContinue)`` tuple. PyAudio (0.2.14) parses
  the callback's result with ``PyArg_ParseTuple("z#i")``, which accepts any "read-only
  bytes-like object" -- an object whose buffer needs no release. A NumPy array qualifies (it has
  no ``bf_releasebuffer``), as does a ctypes array; a ``memoryview`` or ``bytearray`` does NOT
  (``TypeError: argument 1 must be read-only bytes-like object, not memoryview``; PyAudio then
  aborts the stream and re-raises the error asynchronously in the main thread). So: return the
  ndarray, never ``bytes`` (an allocation per block) nor a memoryview (an error).
* an exception from ``render_block`` is counted in :attr:`AudioStats.errors` and a preallocated
  read-only zero buffer is played instead: the audio never stops, and the callback never raises
  (which would also kill the stream).
* render time is measured with ``time.perf_counter``; a block whose render took longer than the
  block period (``block_size / sample_rate``) is counted late.

Device probing (creating the PortAudio context) prints a lot of ALSA/JACK noise on stderr on
machines without a sound card or JACK server; it is silenced by briefly pointing file
descriptor 2 at /dev/null. Set ``MORPHBOX_AUDIO_VERBOSE=1`` to see it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

try:  # PyAudio is a device-only dependency: importing this module must work without it.
    import pyaudio as _pyaudio
except ImportError:  # pragma: no cover - depends on the environment
    _pyaudio = None

if TYPE_CHECKING:
    from typing import Self

__all__ = ["AudioError", "AudioStats", "AudioStream", "PacedNullOutput", "list_output_devices"]

# PortAudio ABI constants (portaudio.h), so the callback needs no PyAudio import.
PA_CONTINUE = 0  # paContinue
PA_OUTPUT_UNDERFLOW = 0x4  # paOutputUnderflow
PA_OUTPUT_OVERFLOW = 0x8  # paOutputOverflow
_XRUN_FLAGS = PA_OUTPUT_UNDERFLOW | PA_OUTPUT_OVERFLOW
_PA_FLOAT32 = 1  # paFloat32
_BYTES_PER_SAMPLE = 4

RenderBlock = Callable[[], np.ndarray]


class AudioError(Exception):
    """The audio output cannot be opened: no device, device not found, unsupported format..."""


@dataclass
class AudioStats:
    """Counters of one stream. Updated only by the audio callback thread.

    :attr:`AudioStream.stats` hands out a snapshot copy (readers cannot disturb the live one).
    The copy is taken field by field without a lock, so two fields may differ by the callback
    that ran in between (a callback counts ``errors`` before ``blocks``).
    """

    blocks: int = 0  # callbacks served
    late_blocks: int = 0  # callbacks whose render took longer than the block period
    xruns: int = 0  # callbacks where PortAudio reported output underflow/overflow
    max_render_s: float = 0.0
    errors: int = 0  # exceptions raised by render_block (silence was played instead)

    def snapshot(self) -> AudioStats:
        """A copy (what :attr:`AudioStream.stats` hands out)."""
        return replace(self)

    def count(self, render_s: float, period_s: float) -> None:
        """Count one served block that took ``render_s`` seconds to render."""
        self.blocks += 1
        if render_s > self.max_render_s:
            self.max_render_s = render_s
        if render_s > period_s:
            self.late_blocks += 1


class _BlockCallback:
    """The PyAudio stream callback. Separate from :class:`AudioStream` so it can be unit-tested
    without PortAudio: ``cb(None, block_size, {}, 0)`` returns ``(buffer, paContinue)``."""

    __slots__ = (
        "_frame_bytes",
        "_frames",
        "_out",
        "_period_s",
        "_render",
        "_ret_out",
        "_ret_silence",
        "_shape",
        "_clock",
        "last_error",
        "stats",
    )

    def __init__(
        self,
        render_block: RenderBlock,
        *,
        sample_rate: int,
        block_size: int,
        channels: int,
        stats: AudioStats | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._render = render_block
        self._clock = clock
        self._frames = block_size
        self._shape = (block_size, channels)
        self._period_s = block_size / sample_rate
        self._frame_bytes = channels * _BYTES_PER_SAMPLE
        self._out = np.zeros(self._shape, dtype=np.float32)
        silence = np.zeros(self._shape, dtype=np.float32)
        silence.flags.writeable = False
        # Preallocated return values: PyAudio copies the buffer out before the next callback.
        self._ret_out = (self._out, PA_CONTINUE)
        self._ret_silence = (silence, PA_CONTINUE)
        self.stats = stats if stats is not None else AudioStats()
        self.last_error: BaseException | None = None

    def __call__(
        self, in_data: Any, frame_count: int, time_info: Any, status_flags: int
    ) -> tuple[Any, int]:
        t0 = self._clock()
        stats = self.stats
        if status_flags & _XRUN_FLAGS:
            stats.xruns += 1
        if frame_count != self._frames:
            # PortAudio guarantees frames_per_buffer frames per callback; never trust it blindly
            # though: a short return would make PyAudio end the stream (paComplete).
            stats.errors += 1
            ret: tuple[Any, int] = (bytes(frame_count * self._frame_bytes), PA_CONTINUE)
        else:
            try:
                block = self._render()
                if block.shape != self._shape:
                    raise ValueError(
                        f"render_block returned shape {block.shape}, expected {self._shape}"
                    )
                # Copies (and casts, e.g. from float64) into the preallocated buffer: no
                # allocation, and the engine may reuse its own array for the next block.
                np.copyto(self._out, block, casting="same_kind")
                ret = self._ret_out
            except Exception as exc:  # noqa: BLE001 - the audio must never stop
                stats.errors += 1
                self.last_error = exc
                ret = self._ret_silence
        stats.count(self._clock() - t0, self._period_s)
        return ret


# --------------------------------------------------------------------------------------------
# Device discovery


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null for the duration (ALSA/JACK libraries print straight to it)."""
    if os.environ.get("MORPHBOX_AUDIO_VERBOSE"):
        yield
        return
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _open_pyaudio() -> Any:
    """A new ``pyaudio.PyAudio`` (initialises PortAudio and enumerates devices), quietly."""
    if _pyaudio is None:
        raise AudioError("PyAudio is not installed (pip install 'morphbox[device]')")
    try:
        with _quiet_stderr():
            return _pyaudio.PyAudio()
    except Exception as exc:
        raise AudioError(f"cannot initialise PortAudio: {exc}") from exc


@dataclass(frozen=True)
class _Device:
    index: int
    name: str
    host_api: str
    max_output_channels: int
    default_sample_rate: float

    def describe(self) -> str:
        return f"#{self.index} {self.name!r} [{self.host_api}]"


def _host_api_names(pa: Any) -> dict[int, str]:
    names = {}
    for i in range(pa.get_host_api_count()):
        info = pa.get_host_api_info_by_index(i)
        names[int(info["index"])] = str(info["name"])
    return names


def _output_devices(pa: Any, host_api: str | None = None) -> list[_Device]:
    """Output-capable devices, in PortAudio order; only those of ``host_api`` if given."""
    apis = _host_api_names(pa)
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxOutputChannels", 0)) <= 0:
            continue
        dev = _Device(
            index=int(info["index"]),
            name=str(info["name"]),
            host_api=apis.get(int(info["hostApi"]), "?"),
            max_output_channels=int(info["maxOutputChannels"]),
            default_sample_rate=float(info.get("defaultSampleRate", 0.0)),
        )
        if host_api is None or _api_matches(dev.host_api, host_api):
            devices.append(dev)
    return devices


def _api_matches(api_name: str, wanted: str) -> bool:
    return wanted.casefold() in api_name.casefold()


def _api_default_index(pa: Any, host_api: str) -> int | None:
    """The default output device of the first host API whose name contains ``host_api``."""
    for i in range(pa.get_host_api_count()):
        info = pa.get_host_api_info_by_index(i)
        if _api_matches(str(info["name"]), host_api):
            return int(info.get("defaultOutputDevice", -1))
    return None


def _pa_default_index(pa: Any) -> int | None:
    try:
        return int(pa.get_default_output_device_info()["index"])
    except (OSError, KeyError, ValueError):  # PyAudio raises OSError when there is none
        return None


def _resolve_device(pa: Any, device: int | str | None, host_api: str | None) -> _Device:
    """The output device for ``device`` (None / index / name substring), preferring host_api."""
    every = _output_devices(pa)
    if not every:
        raise AudioError("no audio output device found (no sound card, no JACK server?)")
    by_index = {d.index: d for d in every}
    preferred = [] if host_api is None else [d for d in every if _api_matches(d.host_api, host_api)]

    def listing() -> str:
        return ", ".join(d.describe() for d in every)

    if device is None:
        if preferred:
            idx = _api_default_index(pa, host_api)
            return by_index[idx] if idx in {d.index for d in preferred} else preferred[0]
        return by_index.get(_pa_default_index(pa), every[0])
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise TypeError(f"device must be None, an int index or a name substring, not {device!r}")
    if isinstance(device, int):
        if device not in by_index:
            raise AudioError(f"no output device with index {device}; output devices: {listing()}")
        return by_index[device]
    # The preferred host API's devices first, then the rest (PortAudio order otherwise).
    ordered = preferred + [d for d in every if d not in preferred]
    wanted = device.casefold()
    exact = [d for d in ordered if d.name.casefold() == wanted]
    matches = exact or [d for d in ordered if wanted in d.name.casefold()]
    if not matches:
        raise AudioError(f"output device {device!r} not found; output devices: {listing()}")
    return matches[0]


def list_output_devices(host_api: str | None = None) -> list[str]:
    """Names of the output devices (only those of ``host_api``, e.g. "JACK" or "ALSA", if given).

    Raises :class:`AudioError` if PyAudio is missing or PortAudio cannot be initialised.
    """
    pa = _open_pyaudio()
    try:
        return [d.name for d in _output_devices(pa, host_api)]
    finally:
        pa.terminate()


# --------------------------------------------------------------------------------------------
# The stream


class AudioStream:
    """A callback-mode PortAudio output stream playing ``render_block()`` block after block.

    ``device``: None for the default output device, an int PortAudio device index, or a
    (case-insensitive) substring of the device name. ``host_api`` (e.g. "JACK", "ALSA") makes
    devices of that host API preferred, falling back to the others if it has none.

    The device is resolved and the format checked in the constructor (raising
    :class:`AudioError` with a clear message); the stream is opened by :meth:`start`. Used as a
    context manager it starts on entry and closes on exit.
    """

    def __init__(
        self,
        render_block: RenderBlock,
        *,
        sample_rate: int = 48000,
        block_size: int = 128,
        channels: int = 2,
        device: int | str | None = None,
        host_api: str | None = None,
        stats: AudioStats | None = None,
    ) -> None:
        if not callable(render_block):
            raise TypeError("render_block must be a zero-argument callable")
        if sample_rate <= 0 or block_size <= 0 or channels <= 0:
            raise ValueError("sample_rate, block_size and channels must be positive")
        self._sample_rate = int(sample_rate)
        self._block_size = int(block_size)
        self._channels = int(channels)
        # ``stats``: the counters to update (the audio process passes its shared-memory ones,
        # :mod:`morphbox.device.engine.process`); anything with AudioStats' fields, ``count``
        # and ``snapshot``
        self._stats = stats if stats is not None else AudioStats()
        self._callback = _BlockCallback(
            render_block,
            sample_rate=self._sample_rate,
            block_size=self._block_size,
            channels=self._channels,
            stats=self._stats,
        )
        self._stream: Any = None
        self._pa = _open_pyaudio()
        try:
            self._device = _resolve_device(self._pa, device, host_api)
            self._check_format()
        except BaseException:
            self._pa.terminate()
            self._pa = None
            raise

    def _check_format(self) -> None:
        dev = self._device
        if self._channels > dev.max_output_channels:
            raise AudioError(
                f"output device {dev.describe()} has {dev.max_output_channels} output channels, "
                f"{self._channels} requested"
            )
        try:
            with _quiet_stderr():
                self._pa.is_format_supported(
                    self._sample_rate,
                    output_device=dev.index,
                    output_channels=self._channels,
                    output_format=_PA_FLOAT32,
                )
        except ValueError as exc:
            raise AudioError(
                f"output device {dev.describe()} does not support {self._sample_rate} Hz, "
                f"{self._channels} ch float32 ({_pa_message(exc)}); its default rate is "
                f"{dev.default_sample_rate:g} Hz"
            ) from exc

    # -- properties -------------------------------------------------------------------------

    @property
    def stats(self) -> AudioStats:
        """A snapshot copy of the counters."""
        return self._stats.snapshot()

    def reset_max_render(self) -> None:
        """Start :attr:`AudioStats.max_render_s` afresh (to measure one phase of a run). One
        float store; a callback finishing at that instant may keep its own value instead."""
        self._stats.max_render_s = 0.0

    @property
    def active(self) -> bool:
        """True while the stream is running (callbacks are being served)."""
        stream = self._stream
        if stream is None:
            return False
        try:
            return bool(stream.is_active())
        except OSError:
            return False

    @property
    def output_latency_s(self) -> float:
        """PortAudio's output latency of the open stream, seconds (0 before :meth:`start`)."""
        try:
            return float(self._stream.get_output_latency()) if self._stream is not None else 0.0
        except (OSError, AttributeError):
            return 0.0

    @property
    def last_error(self) -> BaseException | None:
        """The last exception raised by ``render_block`` (for logging outside the callback)."""
        return self._callback.last_error

    @property
    def device_name(self) -> str:
        return self._device.name

    @property
    def host_api_name(self) -> str:
        return self._device.host_api

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def channels(self) -> int:
        return self._channels

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the stream (first time) and start it. No-op if already running."""
        if self._pa is None:
            raise AudioError("stream is closed")
        if self._stream is None:
            try:
                with _quiet_stderr():
                    self._stream = self._pa.open(
                        rate=self._sample_rate,
                        channels=self._channels,
                        format=_PA_FLOAT32,
                        output=True,
                        output_device_index=self._device.index,
                        frames_per_buffer=self._block_size,
                        stream_callback=self._callback,
                        start=False,
                    )
            except (OSError, ValueError) as exc:
                raise AudioError(
                    f"cannot open output stream on {self._device.describe()} at "
                    f"{self._sample_rate} Hz, {self._block_size} frames: {_pa_message(exc)}"
                ) from exc
        if not self._stream.is_active():
            try:
                if not self._stream.is_stopped():
                    self._stream.stop_stream()  # finished/aborted: reset before restarting
                self._stream.start_stream()
            except OSError as exc:
                raise AudioError(f"cannot start output stream: {_pa_message(exc)}") from exc

    def stop(self) -> None:
        """Stop the stream (waits for the blocks already queued). :meth:`start` resumes it."""
        if self._stream is not None:
            try:
                if not self._stream.is_stopped():
                    self._stream.stop_stream()
            except OSError:
                pass

    def close(self) -> None:
        """Stop and release the stream and PortAudio. Idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()  # stops it first
            except OSError:
                pass
        pa, self._pa = self._pa, None
        if pa is not None:
            pa.terminate()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: do not leave a JACK client behind
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        dev = getattr(self, "_device", None)
        where = dev.describe() if dev is not None else "?"
        return (
            f"AudioStream({where}, {self._sample_rate} Hz, {self._block_size} frames, "
            f"{self._channels} ch, active={self.active})"
        )

    # -- probing ----------------------------------------------------------------------------

    @staticmethod
    def available(host_api: str | None = None) -> bool:
        """True if ``AudioStream(..., host_api=host_api)`` would find an output device.

        Never raises (False if PyAudio is missing or PortAudio fails). With ``host_api`` given,
        devices of other host APIs still count, as :class:`AudioStream` falls back to them.
        """
        try:
            pa = _open_pyaudio()
        except Exception:  # noqa: BLE001
            return False
        try:
            _resolve_device(pa, None, host_api)
            return True
        except Exception:  # noqa: BLE001
            return False
        finally:
            with contextlib.suppress(Exception):
                pa.terminate()


def _pa_message(exc: BaseException) -> str:
    """PyAudio raises ``OSError(code, text)`` / ``ValueError(text, code)``: keep the text."""
    texts = [a for a in exc.args if isinstance(a, str)]
    return texts[0] if texts else str(exc)


class PacedNullOutput:
    """Renders blocks at the real-time rate into nothing; the same ``stats`` as
    :class:`AudioStream`. For running the whole service where no audio output exists (a laptop
    without a sound card, CI)."""

    def __init__(self, render_block: RenderBlock, sample_rate: int, block_size: int,
                 stats: AudioStats | None = None):
        self._render = render_block
        self._period = block_size / sample_rate
        self._stats = stats if stats is not None else AudioStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.device_name = "none (paced null output)"

    @property
    def stats(self) -> AudioStats:
        return self._stats.snapshot()

    def reset_max_render(self) -> None:
        self._stats.max_render_s = 0.0

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="null-audio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stats = self._stats
        next_t = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self._render()
            except Exception:  # noqa: BLE001 - the audio never stops
                stats.errors += 1
            stats.count(time.perf_counter() - t0, self._period)
            next_t += self._period
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -0.1:  # fell far behind: resynchronise instead of bursting
                stats.xruns += 1
                next_t = time.perf_counter()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    close = stop
