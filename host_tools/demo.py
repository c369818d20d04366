"""The main job: play a Bach chorale on the default pack while the touch tours the corners.

Writes ``out/demo.wav`` and ``out/demo.png`` (spectrogram with the touch path under it), and
plays the result live when an audio output exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from morphbox.device.engine.voices import Engine, EngineConfig
from morphbox.device.midi.files import DEMO_MIDI, midi_events, play, render_blocks
from morphbox.device.packs.format import DEFAULT_PACK, grid_from_pack, load_pack
from morphbox.device.panel.paths import touch_path


def render_piece(midi: str | Path = DEMO_MIDI, pack: str | Path = DEFAULT_PACK,
                 path: str = "corners", config: EngineConfig | None = None,
                 morph_mode: str = "follow", mpe: str = "auto",
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Render ``midi`` offline on ``pack`` with the touch following ``path``, voices placed by
    ``morph_mode`` (``follow``, ``latch``, ``mpe``; MPE files play per-note bend, pressure
    and CC 74 in any mode, see :func:`morphbox.device.midi.router.dispatch`). ``mpe``:
    ``auto`` (MPE if the file has an MPE Configuration Message), ``on`` or ``off``
    (:func:`morphbox.device.midi.files.use_mpe`).

    Returns ``(audio (samples, channels) float32, touch_times (s), touch_xy (n, 2),
    seconds spent rendering)``.
    """
    grid = grid_from_pack(load_pack(pack))
    engine = Engine(grid, config)
    engine.controls.set_morph_mode(morph_mode)
    events = midi_events(midi)
    route = touch_path(path)
    times, xy = [], []

    def record(t):
        if not times or t - times[-1] >= 0.02:
            s = engine.controls.snapshot
            times.append(t)
            xy.append((s.x, s.y))

    t0 = time.perf_counter()
    audio = play(engine, events, route, on_block=record, mpe=mpe)
    return audio, np.array(times), np.array(xy), time.perf_counter() - t0


def render_file(midi: str | Path, out: str | Path, pack: str | Path = DEFAULT_PACK,
                path: str = "corners", config: EngineConfig | None = None,
                morph_mode: str = "follow", mpe: str = "auto") -> tuple[float, float]:
    """Render ``midi`` on ``pack`` with the touch following ``path`` straight into the 16-bit
    WAV file ``out``, one second at a time: memory stays that of one second of audio however
    long the piece. The MIDI file is read first (:func:`morphbox.device.midi.files.midi_events`
    refuses a malformed one with :class:`~morphbox.device.midi.files.MidiFileError`), so a bad
    file costs no pack load. Returns ``(seconds of audio, seconds spent rendering)``; raises
    ``OSError`` if ``out`` cannot be written (a partial file is removed). ``morph_mode``:
    ``follow``, ``latch`` or ``mpe`` (a file recorded on the box sets its own); ``mpe`` as in
    :func:`render_piece`."""
    events = midi_events(midi)
    route = touch_path(path)
    engine = Engine(grid_from_pack(load_pack(pack)), config)
    engine.controls.set_morph_mode(morph_mode)
    cfg = engine.config
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunk = np.empty((max(1, cfg.sample_rate // cfg.block_size) * cfg.block_size,
                      cfg.channels), np.float32)
    frames, fill = 0, 0
    t0 = time.perf_counter()
    try:
        with _WavOut(out, cfg.sample_rate, cfg.channels) as f:
            for block in render_blocks(engine, events, route, mpe=mpe):
                chunk[fill:fill + len(block)] = block
                fill += len(block)
                if fill == len(chunk):
                    f.write(chunk)
                    frames, fill = frames + fill, 0
            f.write(chunk[:fill])
            frames += fill
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return frames / cfg.sample_rate, time.perf_counter() - t0


class _WavOut:
    """A 16-bit PCM WAV file written a chunk at a time (``write(float32 (frames, channels))``,
    -1..1): through soundfile (host extra) when installed, else the standard library's
    ``wave`` (a device-only install), with the same samples either way."""

    def __init__(self, path: Path, sample_rate: int, channels: int):
        try:
            import soundfile as sf
        except ImportError:
            import wave
            self._sf = None
            self._f = wave.open(str(path), "wb")  # noqa: SIM115 - closed in __exit__
            self._f.setnchannels(int(channels))
            self._f.setsampwidth(2)
            self._f.setframerate(int(sample_rate))
        else:
            self._sf = self._f = sf.SoundFile(str(path), "w", int(sample_rate), int(channels),
                                              "PCM_16")

    def write(self, frames: np.ndarray) -> None:
        if self._sf is not None:
            self._f.write(frames)
        else:
            pcm = np.clip(np.rint(np.asarray(frames, np.float32) * 32767.0), -32768, 32767)
            self._f.writeframes(pcm.astype("<i2").tobytes())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ``(samples, channels)`` (or ``(samples,)``) in -1..1 as 16-bit PCM
    WAV. Uses soundfile (host extra) when installed, else the standard library's ``wave``, so
    ``morphbox render`` also works on a device-only install."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import soundfile as sf
    except ImportError:  # device-only install: the same 16-bit PCM through the stdlib
        import wave
        audio = np.asarray(audio, np.float32)
        frames = audio if audio.ndim == 2 else audio[:, None]
        pcm = np.clip(np.rint(frames * 32767.0), -32768, 32767).astype("<i2")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(frames.shape[1])
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())
        return path
    sf.write(str(path), audio, sample_rate, subtype="PCM_16")
    return path


def run_demo(out_dir: str | Path = "out", live: bool | None = None, path: str = "corners",
             midi: str | Path = DEMO_MIDI, pack: str | Path = DEFAULT_PACK) -> dict:
    """Render the demo, write WAV + PNG into ``out_dir``, play live if possible.

    ``live``: True = must play (raises if no device), False = never, None = if a device exists.
    Returns a summary dict (paths, durations, peak level).
    """
    from morphbox.host_tools.plots import plot_demo
    config = EngineConfig()
    audio, times, xy, secs = render_piece(midi, pack, path, config)
    out_dir = Path(out_dir)
    wav = write_wav(out_dir / "demo.wav", audio, config.sample_rate)
    png = plot_demo(audio[:, 0], config.sample_rate, times, xy, out_dir / "demo.png",
                    title=f"Bach BWV 269 on '{load_pack(pack).name}', touch path: {path}")
    duration = len(audio) / config.sample_rate
    summary = {"wav": str(wav), "png": str(png), "seconds": round(duration, 1),
               "render_seconds": round(secs, 2), "peak": float(np.max(np.abs(audio))),
               "played_live": False}
    if live is not False:
        from morphbox.device.engine.audio import AudioStream
        if AudioStream.available():
            _play_buffer(audio, config)
            summary["played_live"] = True
        elif live:
            raise RuntimeError("no audio output device found")
    return summary


def _play_buffer(audio: np.ndarray, config: EngineConfig) -> None:
    """Play a rendered buffer through the live audio stream, block by block."""
    from morphbox.device.engine.audio import AudioStream
    bs = config.block_size
    blocks = iter(range(0, len(audio) - bs + 1, bs))
    silence = np.zeros((bs, config.channels), np.float32)

    def next_block():
        i = next(blocks, None)
        return silence if i is None else audio[i:i + bs]

    with AudioStream(next_block, sample_rate=config.sample_rate, block_size=bs,
                     channels=config.channels) as stream:
        time.sleep(len(audio) / config.sample_rate + 0.3)
        return stream.stats


def render_mpe_example(pack: str | Path = DEFAULT_PACK) -> dict:
    """A short MPE phrase on ``pack`` in the ``mpe`` morph mode, for docs/mpe.png: three notes
    on member channels 2..4 with the touch at the centre; the first slides up (CC 74 -> 127,
    north) and bends +2 semitones, the second presses (pressure -> 127, east), the third
    stays. Returns ``{"audio": (samples,) float32, "sample_rate", "times": (blocks,) s,
    "positions": (blocks, 3, 2) each voice's (x, y), "notes": (3,) MIDI}``."""
    import mido

    grid = grid_from_pack(load_pack(pack))
    engine = Engine(grid)
    c = engine.controls
    c.set_morph_mode("mpe")
    c.set_touch(0.5, 0.5)
    c.set_adsr(attack_s=0.02, decay_s=0.3, sustain=0.9, release_s=0.5)
    notes = (52, 59, 67)
    events = [(0.0, mido.Message("note_on", note=n, velocity=90, channel=1 + i))
              for i, n in enumerate(notes)]
    for k in range(1, 101):  # 1.0 .. 3.0 s: the gestures, 20 ms apart
        t, u = 1.0 + 0.02 * k, k / 100
        events += [(t, mido.Message("control_change", control=74, value=64 + round(63 * u),
                                    channel=1)),
                   (t, mido.Message("pitchwheel", pitch=round(u * 2 / 48 * 8192), channel=1)),
                   (t, mido.Message("aftertouch", value=round(127 * u), channel=2))]
    events += [(4.0, mido.Message("note_off", note=n, channel=1 + i))
               for i, n in enumerate(notes)]
    events.sort(key=lambda e: e[0])
    times, positions = [], []

    def track(t):
        p = engine.voice_positions()
        if len(p) >= 3:
            times.append(t)
            positions.append(p[:3])

    audio = play(engine, events, duration_s=4.6, on_block=track)[:, 0]
    return {"audio": audio, "sample_rate": engine.config.sample_rate,
            "times": np.array(times), "positions": np.array(positions), "notes": notes}
