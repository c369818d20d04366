"""Tests of device/engine/audio.py.

* The stream callback, called directly (no PortAudio needed).
* Device resolution against a fake PyAudio (no PortAudio needed).
* End to end through PyAudio's JACK host API against a real ``jackd`` with the dummy driver
  (fixture ``jack_server``): block rate, and what was actually played, recorded with
  ``jack_rec`` connected to PortAudio's output ports.

Tolerances are generous: a 2-core CI machine runs jackd without real-time priority.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from morphbox.device.engine import audio
from morphbox.device.engine.audio import (
    PA_CONTINUE,
    PA_OUTPUT_OVERFLOW,
    PA_OUTPUT_UNDERFLOW,
    AudioError,
    AudioStats,
    AudioStream,
    _BlockCallback,
    list_output_devices,
)
from tests.helpers import wait_until

SR = 48000
BLOCK = 128
CHANNELS = 2
BLOCKS_PER_S = SR / BLOCK  # 375
AMP = 0.5


def _tone_table(freqs: tuple[float, ...], amp: float = AMP) -> np.ndarray:
    """One second of tones, one per channel, cut into blocks: (375, BLOCK, channels) float32.

    Integer frequencies make whole cycles in one second, so cycling the table is seamless.
    """
    n = np.arange(SR)
    table = np.stack([amp * np.sin(2 * np.pi * f * n / SR) for f in freqs], axis=1)
    return np.ascontiguousarray(table.astype(np.float32).reshape(SR // BLOCK, BLOCK, len(freqs)))


class ToneRenderer:
    """render_block for the tests: cycles a precomputed table; raises while ``fail`` is set."""

    def __init__(self, freqs: tuple[float, ...] = (440.0, 660.0)) -> None:
        self.table = _tone_table(freqs)
        self.i = 0
        self.fail = False

    def __call__(self) -> np.ndarray:
        if self.fail:
            raise RuntimeError("engine exploded")
        block = self.table[self.i]
        self.i = (self.i + 1) % len(self.table)
        return block


def _wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(pred, max(timeout, 60.0), what)  # a condition, with a deadline for loaded CI


def _spectral_peak(x: np.ndarray, sr: int = SR) -> tuple[float, float]:
    """(peak frequency in Hz, fraction of the signal's energy within 10 Hz of the peak)."""
    x = x - x.mean()
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(mag[1:-1])) + 1
    a, b, c = np.log(mag[k - 1 : k + 2] + 1e-12)
    delta = 0.5 * (a - c) / (a - 2 * b + c)  # parabolic interpolation of the peak
    hz_per_bin = sr / len(x)
    power = mag**2
    lo, hi = max(0, int(k - 10 / hz_per_bin)), int(k + 10 / hz_per_bin) + 1
    return (k + delta) * hz_per_bin, float(power[lo:hi].sum() / power.sum())


def _instantaneous_hz(x: np.ndarray, sr: int = SR) -> float:
    """Median instantaneous frequency (phase derivative of the analytic signal).

    Exact for a clean sine; a glitch (a dropped or repeated JACK cycle) only spoils the few
    samples around it, which the median ignores.
    """
    n = len(x)
    h = np.zeros(n)
    h[0] = 1.0
    h[1 : (n + 1) // 2] = 2.0
    if n % 2 == 0:
        h[n // 2] = 1.0
    analytic = np.fft.ifft(np.fft.fft(x) * h)
    return float(np.median(np.diff(np.unwrap(np.angle(analytic)))) * sr / (2 * np.pi))


@dataclass(frozen=True)
class ToneAnalysis:
    peak_hz: float  # spectral peak of the cleanest 0.1 s window
    purity: float  # its energy fraction within 10 Hz of the peak
    clean_fraction: float  # fraction of windows with purity > 0.99
    inst_hz: float  # median instantaneous frequency over the whole capture

    def __str__(self) -> str:
        return (
            f"peak {self.peak_hz:.2f} Hz (purity {self.purity:.4f}, "
            f"{self.clean_fraction:.0%} clean windows), instantaneous {self.inst_hz:.3f} Hz"
        )


def _tone_analysis(x: np.ndarray, window_s: float = 0.1) -> ToneAnalysis:
    """Frequency of a captured tone, robust to glitches.

    A loaded machine can drop a JACK cycle now and then (ours or jack_rec's): each glitch
    spoils a window's spectrum, and dropped samples bias a whole-capture spectrum upwards.
    So: the spectrum of the cleanest window, and the glitch-immune instantaneous frequency.
    """
    win = int(window_s * SR)
    stats = np.array([_spectral_peak(x[i : i + win]) for i in range(0, len(x) - win + 1, win)])
    best = int(np.argmax(stats[:, 1]))
    return ToneAnalysis(
        peak_hz=float(stats[best, 0]),
        purity=float(stats[best, 1]),
        clean_fraction=float(np.mean(stats[:, 1] > 0.99)),
        inst_hz=_instantaneous_hz(x),
    )


# --------------------------------------------------------------------------------------------
# The callback, called directly


def _callback(render: Callable[[], Any], *, block_size: int = BLOCK, **kw) -> _BlockCallback:
    return _BlockCallback(render, sample_rate=SR, block_size=block_size, channels=CHANNELS,
                          **kw)


class TestBlockCallback:
    def test_returns_the_rendered_block_as_a_preallocated_buffer(self) -> None:
        rng = np.random.default_rng(0)
        blocks = [rng.uniform(-1, 1, (BLOCK, CHANNELS)).astype(np.float32) for _ in range(3)]
        it = iter(blocks)
        cb = _callback(lambda: next(it))

        first = cb(None, BLOCK, {}, 0)
        out, flag = first
        assert flag == PA_CONTINUE
        # What PyAudio accepts and copies: a C-contiguous float32 buffer of exactly one block.
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert memoryview(out).nbytes == BLOCK * CHANNELS * 4
        assert out.tobytes() == blocks[0].tobytes()
        for expected in blocks[1:]:
            ret = cb(None, BLOCK, {}, 0)
            assert ret is first  # same preallocated tuple and buffer every block
            assert ret[0].tobytes() == expected.tobytes()
        assert cb.stats == AudioStats(
            blocks=3, late_blocks=0, xruns=0, max_render_s=cb.stats.max_render_s, errors=0
        )
        assert cb.stats.max_render_s > 0

    def test_the_engine_may_reuse_its_buffer(self) -> None:
        buf = np.zeros((BLOCK, CHANNELS), np.float32)
        cb = _callback(lambda: buf)
        out, _ = cb(None, BLOCK, {}, 0)
        buf[:] = 0.25  # the engine already renders the next block into its own array
        assert not out.any()

    def test_float64_block_is_converted(self) -> None:
        block = np.linspace(-1, 1, BLOCK * CHANNELS).reshape(BLOCK, CHANNELS)
        cb = _callback(lambda: block)
        out, _ = cb(None, BLOCK, {}, 0)
        np.testing.assert_array_equal(out, block.astype(np.float32))
        assert cb.stats.errors == 0

    def test_a_render_longer_than_the_block_period_counts_late(self) -> None:
        period = BLOCK / SR  # 2.7 ms
        block = np.zeros((BLOCK, CHANNELS), np.float32)
        now = [0.0]  # the callback's clock: each render takes 8 block periods of it

        def slow() -> np.ndarray:
            now[0] += 8 * period
            return block

        cb = _callback(slow, clock=lambda: now[0])
        for _ in range(2):
            cb(None, BLOCK, {}, 0)
        assert cb.stats.blocks == 2
        assert cb.stats.late_blocks == 2
        assert cb.stats.max_render_s >= 8 * period

        # A fast render with a long period (4800 frames = 100 ms) is never late, even on a
        # loaded machine.
        big = np.zeros((4800, CHANNELS), np.float32)
        fast = _callback(lambda: big, block_size=4800)
        for _ in range(20):
            fast(None, 4800, {}, 0)
        assert fast.stats.blocks == 20
        assert fast.stats.late_blocks == 0

    def test_an_exception_plays_silence_and_is_counted(self) -> None:
        tone = ToneRenderer()
        cb = _callback(tone)
        tone.fail = True
        for _ in range(3):
            out, flag = cb(None, BLOCK, {}, 0)
            assert flag == PA_CONTINUE
            assert out.shape == (BLOCK, CHANNELS) and not out.any()
        assert cb.stats.errors == 3 and cb.stats.blocks == 3
        assert isinstance(cb.last_error, RuntimeError)
        tone.fail = False
        out, _ = cb(None, BLOCK, {}, 0)
        assert out.tobytes() == tone.table[0].tobytes()
        assert cb.stats.errors == 3 and cb.stats.blocks == 4

    @pytest.mark.parametrize(
        "bad",
        [np.zeros((BLOCK // 2, CHANNELS), np.float32), np.zeros(BLOCK, np.float32), None, b"x"],
        ids=["short", "1d", "none", "bytes"],
    )
    def test_a_malformed_block_plays_silence_and_is_counted(self, bad: Any) -> None:
        cb = _callback(lambda: bad)
        out, flag = cb(None, BLOCK, {}, 0)
        assert flag == PA_CONTINUE and out.shape == (BLOCK, CHANNELS) and not out.any()
        assert cb.stats.errors == 1

    def test_xrun_flags_are_counted(self) -> None:
        block = np.zeros((BLOCK, CHANNELS), np.float32)
        cb = _callback(lambda: block)
        # input underflow/overflow (1, 2) and priming output (0x10) are not output xruns
        for flags in (0, 0x1, 0x2, 0x10, PA_OUTPUT_UNDERFLOW, PA_OUTPUT_OVERFLOW, 0x4 | 0x8):
            cb(None, BLOCK, {}, flags)
        assert cb.stats.xruns == 3
        assert cb.stats.blocks == 7

    def test_an_unexpected_frame_count_gets_silence_of_the_right_length(self) -> None:
        calls = []
        cb = _callback(lambda: calls.append(1))
        out, flag = cb(None, 64, {}, 0)
        assert flag == PA_CONTINUE
        assert bytes(out) == bytes(64 * CHANNELS * 4)
        assert cb.stats.errors == 1 and not calls

    def test_constants_match_pyaudio(self) -> None:
        pyaudio = pytest.importorskip("pyaudio")
        assert pyaudio.paContinue == PA_CONTINUE
        assert pyaudio.paOutputUnderflow == PA_OUTPUT_UNDERFLOW
        assert pyaudio.paOutputOverflow == PA_OUTPUT_OVERFLOW
        assert pyaudio.paFloat32 == audio._PA_FLOAT32


# --------------------------------------------------------------------------------------------
# Device resolution, against a fake PyAudio


class FakePyAudio:
    """The slice of the PyAudio API that device resolution uses."""

    def __init__(
        self,
        apis: list[tuple[str, int]],
        devices: list[tuple[str, int, int]],
        default_output: int = -1,
        rates: tuple[int, ...] = (44100, 48000),
    ) -> None:
        self.apis = [
            {"index": i, "name": name, "defaultOutputDevice": d} for i, (name, d) in enumerate(apis)
        ]
        self.devices = [
            {
                "index": i,
                "name": name,
                "hostApi": api,
                "maxOutputChannels": ch,
                "defaultSampleRate": 48000.0,
            }
            for i, (name, api, ch) in enumerate(devices)
        ]
        self.default_output = default_output
        self.rates = rates
        self.terminated = False

    def get_host_api_count(self) -> int:
        return len(self.apis)

    def get_host_api_info_by_index(self, i: int) -> dict:
        return self.apis[i]

    def get_device_count(self) -> int:
        return len(self.devices)

    def get_device_info_by_index(self, i: int) -> dict:
        return self.devices[i]

    def get_default_output_device_info(self) -> dict:
        if self.default_output < 0:
            raise OSError("No Default Output Device Available")
        return self.devices[self.default_output]

    def is_format_supported(self, rate: float, **kwargs: Any) -> bool:
        if rate not in self.rates:
            raise ValueError("Invalid sample rate", -9997)
        return True

    def terminate(self) -> None:
        self.terminated = True


def _pi_like() -> FakePyAudio:
    return FakePyAudio(
        apis=[("ALSA", 1), ("JACK Audio Connection Kit", 3)],
        devices=[
            ("USB mic: - (hw:2,0)", 0, 0),  # input only
            ("bcm2835 Headphones: - (hw:0,0)", 0, 2),
            ("USB Audio DAC: - (hw:1,0)", 0, 2),
            ("system", 1, 2),
        ],
        default_output=1,
    )


@pytest.fixture
def fake_pa(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakePyAudio], FakePyAudio]:
    def install(pa: FakePyAudio) -> FakePyAudio:
        monkeypatch.setattr(audio, "_open_pyaudio", lambda: pa)
        return pa

    return install


def _silent() -> np.ndarray:
    return np.zeros((BLOCK, CHANNELS), np.float32)


class TestDeviceResolution:
    def test_no_output_device(self, fake_pa: Callable[[FakePyAudio], FakePyAudio]) -> None:
        pa = fake_pa(FakePyAudio(apis=[("ALSA", -1)], devices=[("mic", 0, 0)]))
        assert AudioStream.available() is False
        assert AudioStream.available("JACK") is False
        assert list_output_devices() == []
        with pytest.raises(AudioError, match="no audio output device"):
            AudioStream(_silent)
        assert pa.terminated

    def test_default_device(self, fake_pa: Callable[[FakePyAudio], FakePyAudio]) -> None:
        fake_pa(_pi_like())
        assert AudioStream.available() is True
        assert list_output_devices() == [
            "bcm2835 Headphones: - (hw:0,0)",
            "USB Audio DAC: - (hw:1,0)",
            "system",
        ]
        assert list_output_devices("jack") == ["system"]
        stream = AudioStream(_silent)
        assert stream.device_name == "bcm2835 Headphones: - (hw:0,0)"
        assert stream.host_api_name == "ALSA"
        assert not stream.active
        stream.close()

    def test_host_api_is_preferred(self, fake_pa: Callable[[FakePyAudio], FakePyAudio]) -> None:
        fake_pa(_pi_like())
        stream = AudioStream(_silent, host_api="JACK")
        assert (stream.device_name, stream.host_api_name) == ("system", "JACK Audio Connection Kit")
        stream.close()
        # a name matching on several host APIs: the preferred one wins
        pa = _pi_like()
        pa.devices.append({**pa.devices[3], "index": 4, "name": "system", "hostApi": 0})
        fake_pa(pa)
        assert AudioStream(_silent, device="system", host_api="ALSA").host_api_name == "ALSA"
        assert AudioStream(_silent, device="system", host_api="JACK").device_name == "system"

    def test_missing_host_api_falls_back(
        self, fake_pa: Callable[[FakePyAudio], FakePyAudio]
    ) -> None:
        pa = _pi_like()
        pa.apis[1]["name"] = "OSS"
        fake_pa(pa)
        assert AudioStream.available("JACK") is True
        assert AudioStream(_silent, host_api="JACK").device_name.startswith("bcm2835")

    def test_device_by_name_or_index(self, fake_pa: Callable[[FakePyAudio], FakePyAudio]) -> None:
        fake_pa(_pi_like())
        assert AudioStream(_silent, device="usb audio").device_name.startswith("USB Audio DAC")
        assert AudioStream(_silent, device=2).device_name.startswith("USB Audio DAC")
        with pytest.raises(AudioError) as info:
            AudioStream(_silent, device="HiFiBerry")
        msg = str(info.value)
        assert "'HiFiBerry' not found" in msg
        for name in ("bcm2835 Headphones: - (hw:0,0)", "USB Audio DAC: - (hw:1,0)", "system"):
            assert name in msg
        with pytest.raises(AudioError, match="index 0"):  # device 0 has no output channels
            AudioStream(_silent, device=0)
        with pytest.raises(TypeError):
            AudioStream(_silent, device=1.5)  # type: ignore[arg-type]

    def test_unsupported_rate_and_channels(
        self, fake_pa: Callable[[FakePyAudio], FakePyAudio]
    ) -> None:
        pa = fake_pa(_pi_like())
        with pytest.raises(AudioError, match=r"does not support 22050 Hz.*default rate is 48000"):
            AudioStream(_silent, sample_rate=22050)
        assert pa.terminated
        with pytest.raises(AudioError, match="2 output channels, 6 requested"):
            AudioStream(_silent, channels=6)

    def test_available_never_raises(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def broken() -> None:
            raise RuntimeError("PortAudio exploded")

        with monkeypatch.context() as m:
            m.setattr(audio, "_open_pyaudio", broken)
            assert AudioStream.available() is False
        monkeypatch.setattr(audio, "_pyaudio", None)  # PyAudio not installed
        assert AudioStream.available() is False
        with pytest.raises(AudioError, match="PyAudio is not installed"):
            list_output_devices()
        with pytest.raises(AudioError, match="PyAudio is not installed"):
            AudioStream(_silent)


# --------------------------------------------------------------------------------------------
# End to end: PyAudio's JACK host API against jackd's dummy driver

PORT_RE = re.compile(r"^PortAudio[^:]*:out_(\d+)$")


@pytest.fixture(scope="module")
def jack(jack_server: Any, skip_or_fail: Callable[[str], Any]) -> Any:
    """The JACK server, once PortAudio (through PyAudio) sees it as an output device."""
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        skip_or_fail("PyAudio is not installed")
    deadline = time.monotonic() + 15
    while not list_output_devices("JACK"):
        if time.monotonic() > deadline:
            skip_or_fail(
                f"PortAudio sees no JACK output device on server {jack_server.name!r} "
                "(PortAudio built without JACK support?)"
            )
        time.sleep(0.2)
    return jack_server


@pytest.fixture
def jack_rec(skip_or_fail: Callable[[str], Any]) -> str:
    path = shutil.which("jack_rec")
    if path is None:
        skip_or_fail("jack_rec is not installed (it comes with jackd2)")
    return path


def _portaudio_output_ports(channels: int) -> list[str]:
    """PortAudio's JACK output ports (``PortAudio:out_0``...), in channel order."""
    ports: list[str] = []

    def found() -> bool:
        res = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10, check=False)
        matches = [(int(m[1]), m[0]) for m in map(PORT_RE.match, res.stdout.split("\n")) if m]
        ports[:] = [name for _, name in sorted(matches)]
        return len(ports) >= channels

    _wait_until(found, 10, f"{channels} PortAudio output ports")
    assert len(ports) == channels, ports
    return ports


def _record(jack_rec: str, ports: list[str], path: Path, seconds: int = 1) -> np.ndarray:
    """Record ``ports`` with jack_rec: (frames, len(ports)) float array in -1..1."""
    cmd = [jack_rec, "-f", str(path), "-d", str(seconds), "-b", "16", *ports]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30 + seconds, check=False)
    assert res.returncode == 0, f"{cmd} failed: {res.stdout}{res.stderr}"
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR and w.getnchannels() == len(ports)
        frames = w.readframes(w.getnframes())
    x = np.frombuffer(frames, dtype="<i2").reshape(-1, len(ports)) / 32768.0
    assert len(x) >= 0.9 * seconds * SR
    return x


def _wait_blocks(stream: AudioStream, n: int, timeout: float = 10) -> None:
    start = stream.stats.blocks
    _wait_until(lambda: stream.stats.blocks >= start + n, timeout, f"{n} audio blocks")


def test_jack_device_is_listed(jack: Any) -> None:
    assert "system" in list_output_devices("JACK")
    assert AudioStream.available("JACK") is True


def test_the_played_audio_is_the_rendered_tone(
    jack: Any, jack_rec: str, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    freqs = (440.0, 660.0)  # left, right: also checks the channel order
    with AudioStream(ToneRenderer(freqs), host_api="JACK") as stream:
        _wait_blocks(stream, 20)
        ports = _portaudio_output_ports(CHANNELS)
        x = _record(jack_rec, ports, tmp_path / "tone.wav", seconds=2)
        assert stream.stats.errors == 0
    for ch, f in enumerate(freqs):
        tone = _tone_analysis(x[:, ch])
        rms = float(np.sqrt(np.mean(x[:, ch] ** 2)))
        record_property(f"ch{ch}", f"{tone}, rms {rms:.4f}")
        print(f"channel {ch} (want {f} Hz): {tone}, rms {rms:.4f}")
        assert abs(tone.peak_hz - f) < 2.0
        assert tone.purity > 0.99
        assert abs(tone.inst_hz - f) < 1.0
        assert abs(rms - AMP / np.sqrt(2)) < 0.15 * AMP / np.sqrt(2)


def test_render_exceptions_play_silence_and_the_stream_goes_on(
    jack: Any, jack_rec: str, tmp_path: Path
) -> None:
    tone = ToneRenderer()
    tone.fail = True
    with AudioStream(tone, host_api="JACK") as stream:
        _wait_until(lambda: stream.stats.errors >= 50, 10, "50 failed renders")
        ports = _portaudio_output_ports(CHANNELS)
        silence = _record(jack_rec, ports, tmp_path / "silence.wav")
        assert not silence.any()
        assert stream.active
        assert isinstance(stream.last_error, RuntimeError)
        s = stream.stats
        # every block failed, and was served all the same (a callback counts the error before
        # the block, and the snapshot reads blocks first: errors >= blocks at any instant)
        assert s.errors >= s.blocks >= 50

        tone.fail = False
        _wait_blocks(stream, 20)
        errors = stream.stats.errors
        _wait_blocks(stream, 100)
        assert stream.stats.errors == errors  # recovered
        assert stream.active
        played = _record(jack_rec, ports, tmp_path / "tone.wav", seconds=2)
    tone = _tone_analysis(played[:, 0])
    print(f"after recovery: {tone}")
    assert abs(tone.peak_hz - 440.0) < 2.0
    assert abs(tone.inst_hz - 440.0) < 1.0


def test_stop_start_and_close(jack: Any) -> None:
    stream = AudioStream(ToneRenderer(), host_api="JACK")
    assert not stream.active
    stream.start()
    stream.start()  # idempotent
    _wait_blocks(stream, 20)
    stream.stop()
    assert not stream.active
    stopped_at = stream.stats.blocks
    with AudioStream(ToneRenderer(), host_api="JACK") as other:  # JACK time passes ...
        _wait_blocks(other, 20)
    assert stream.stats.blocks == stopped_at  # ... without a callback of the stopped stream
    stream.start()
    assert stream.active
    _wait_blocks(stream, 20)
    stream.close()
    stream.close()  # idempotent
    assert not stream.active
    with pytest.raises(AudioError, match="closed"):
        stream.start()


def test_jack_rejects_another_rate_and_unknown_devices(jack: Any) -> None:
    with pytest.raises(AudioError, match=r"does not support 44100 Hz.*48000"):
        AudioStream(ToneRenderer(), host_api="JACK", sample_rate=44100)
    with pytest.raises(AudioError, match=r"'no-such-dac' not found.*'system'"):
        AudioStream(ToneRenderer(), host_api="JACK", device="no-such-dac")


def test_engine_plays_a_midi_note_through_jack_in_tune(
    jack: Any, jack_rec: str, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """End to end: a MIDI note-on -> engine callback in a real JACK-paced stream -> the
    recorded output is the note, in tune, with no late blocks."""
    import mido

    from morphbox.device.engine.voices import Engine
    from morphbox.device.midi.router import dispatch
    from morphbox.device.packs.format import load_default_grid
    from morphbox.host_tools.sources import pitch_error_cents

    engine = Engine(load_default_grid())
    engine.controls.set_adsr(attack_s=0.005, sustain=1.0)
    with AudioStream(engine.render_block, host_api="JACK") as stream:
        _wait_blocks(stream, 20)
        ports = _portaudio_output_ports(CHANNELS)
        dispatch(engine, mido.Message("note_on", note=69, velocity=110))
        x = _record(jack_rec, ports, tmp_path / "note.wav", seconds=2)
        dispatch(engine, mido.Message("note_off", note=69))
        stats = stream.stats
    record_property("stats", str(stats))
    assert stats.errors == 0
    # late blocks depend on machine load: bench/engine.py and bench/midi_latency.py measure them
    sounding = np.flatnonzero(np.abs(x[:, 0]) > 0.01)
    assert sounding.size > SR // 2, "the note was not heard"
    note = x[sounding[0] + SR // 10:sounding[0] + SR // 10 + SR, 0]
    cents = pitch_error_cents(note, SR, 69)
    assert abs(cents) < 5, f"{cents:+.1f} cents"
