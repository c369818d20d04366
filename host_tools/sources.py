"""Source notes for morphbox: single 4.5-second instrument notes at 48 kHz, full band.

Every note the host tools work with is a :class:`SourceNote`: ``(216000,)`` float32
mono audio at :data:`SOURCE_SAMPLE_RATE` (48 kHz: the engine's rate, so nothing of the
instrument above 8 kHz is lost, as it was at NSynth's 16 kHz), DC-free (mean removed, then a
2nd-order Butterworth high-pass at 20 Hz: a source's DC offset or rumble would become noise
below the fundamental), at its own level (not normalised: a pack normalises each instrument
as a whole, so an instrument keeps its loudness across pitch and velocity), plus its MIDI
pitch/velocity and provenance.  Notes come from two places:

* :class:`SoundFontRenderer` renders General MIDI programs offline with FluidSynth
  (note-on held :data:`HOLD_SECONDS`, then note-off, release tail until
  :data:`NOTE_SECONDS`).  Reverb and chorus are disabled so notes are dry; every
  note is rendered on a fresh synth, so renders are deterministic and bleed-free.
* :func:`load_wav` / :func:`load_wav_folder` read user recordings (anything
  ``soundfile`` reads), taking the pitch from the file name or detecting it. Recordings
  are kept at their rate when it is >= 44.1 kHz and resampled to 48 kHz with soxr (VHQ);
  a lower rate is resampled too, and simply has nothing above its Nyquist.

Pitch helpers (:func:`pitch_from_filename`, :func:`detect_pitch`,
:func:`pitch_error_cents`) are shared with the checks that validate rendered notes.
Heavy dependencies (FluidSynth, librosa) are imported lazily.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pathlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import soxr

if TYPE_CHECKING:
    from typing import Self

SOURCE_SAMPLE_RATE = 48000  # Hz, the engine's rate: the whole audible band
NOTE_SECONDS = 4.5  # total note length
HOLD_SECONDS = 4.0  # note-on held this long, then note-off (release tail in the last 0.5 s)
HIGHPASS_HZ = 20.0  # DC and rumble removed below this (2nd-order Butterworth)

NOTE_SAMPLES = int(SOURCE_SAMPLE_RATE * NOTE_SECONDS)  # 216000
AUDIO_SUFFIXES = (".wav", ".flac", ".aiff", ".aif")
PITCH_SOURCES = ("midi", "filename", "detected", "argument")

_DEFAULT_SOUNDFONTS = (
    pathlib.Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    pathlib.Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
)
_RENDER_SILENCE_PEAK = 1e-6  # rendered peak below this is silence (FluidSynth's is exactly 0)
_FILE_SILENCE_PEAK = 1e-4  # -80 dBFS: a file this quiet is silence or dither noise
_FADE_SECONDS = 0.01  # raised-cosine fade applied to the last 10 ms of every note
_DETECT_FMIN, _DETECT_FMAX = 30.0, 4200.0  # Hz, detect_pitch search range
_DETECT_RATE = 16000  # Hz, detect_pitch analyses at this rate (pitch lives well below 8 kHz)


class SourceError(Exception):
    """A source note could not be produced; the message names the file/program/problem."""


# fmt: off
GM_PROGRAM_NAMES: list[str] = [
    # 0 Piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # 8 Chromatic percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells",
    "Dulcimer",
    # 16 Organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion",
    "Harmonica", "Tango Accordion",
    # 24 Guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar",
    "Guitar Harmonics",
    # 32 Bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # 40 Strings
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings",
    "Orchestral Harp", "Timpani",
    # 48 Ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs",
    "Voice Oohs", "Synth Choir", "Orchestra Hit",
    # 56 Brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section",
    "Synth Brass 1", "Synth Brass 2",
    # 64 Reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon",
    "Clarinet",
    # 72 Pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # 80 Synth lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # 88 Synth pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)",
    "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    # 96 Synth effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # 104 Ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # 112 Percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal",
    # 120 Sound effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter",
    "Applause", "Gunshot",
]
# fmt: on
assert len(GM_PROGRAM_NAMES) == 128


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make value equality ambiguous
class SourceNote:
    """One source note.

    audio: (216000,) float32 mono at 48 kHz (4.5 s), DC-free, at the source's own level.
    pitch: MIDI note number 0..127.  velocity: MIDI velocity 1..127.
    instrument: display name, e.g. "Cello" (GM name) or the WAV folder name.
    gain: linear gain applied to the source (1.0: notes are no longer normalised one by one).
    pitch_source: "midi" (rendered), "filename", "detected" or "argument" (given to load_wav).
    Construction validates these and raises SourceError.
    """

    audio: np.ndarray
    pitch: int
    velocity: int
    instrument: str
    gain: float
    pitch_source: str

    def __post_init__(self):
        a = self.audio
        if not isinstance(a, np.ndarray) or a.shape != (NOTE_SAMPLES,) or a.dtype != np.float32:
            raise SourceError(
                f"SourceNote audio must be ({NOTE_SAMPLES},) float32, "
                f"got {getattr(a, 'shape', type(a))} {getattr(a, 'dtype', '')}"
            )
        _check_midi("pitch", self.pitch, 0)
        _check_midi("velocity", self.velocity, 1)
        if self.pitch_source not in PITCH_SOURCES:
            raise SourceError(
                f"pitch_source must be one of {PITCH_SOURCES}, got {self.pitch_source!r}"
            )


def _check_midi(what: str, value, low: int, high: int = 127) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise SourceError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return int(value)


def remove_dc(audio: np.ndarray, sample_rate: int, cutoff_hz: float = HIGHPASS_HZ
              ) -> np.ndarray:
    """``audio`` less its mean, then high-passed at ``cutoff_hz`` (2nd-order Butterworth,
    causal: no pre-echo before the onset). float64, same length."""
    import scipy.signal
    x = np.asarray(audio, dtype=np.float64)
    if not len(x):
        return x
    x = x - x.mean()
    sos = scipy.signal.butter(2, cutoff_hz, "highpass", fs=sample_rate, output="sos")
    return scipy.signal.sosfilt(sos, x)


def _finish(mono: np.ndarray, rate: int, what: str, silence: float) -> tuple[np.ndarray, float]:
    """Resample mono audio to 48 kHz (soxr VHQ), remove DC (:func:`remove_dc`), trim/pad to
    NOTE_SECONDS and fade the last 10 ms. Returns (float32 audio, gain 1.0). Raises
    SourceError for NaN/inf samples or a peak below ``silence``."""
    mono = np.asarray(mono, dtype=np.float64)
    if not np.all(np.isfinite(mono)):
        raise SourceError(f"{what}: audio contains NaN or infinite samples")
    if rate != SOURCE_SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SOURCE_SAMPLE_RATE, quality="VHQ")
    mono = remove_dc(mono[:NOTE_SAMPLES], SOURCE_SAMPLE_RATE)
    out = np.zeros(NOTE_SAMPLES)
    n = min(len(mono), NOTE_SAMPLES)
    out[:n] = mono[:n]
    fade = int(_FADE_SECONDS * SOURCE_SAMPLE_RATE)
    out[-fade:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    peak = float(np.max(np.abs(out)))
    if peak < silence:
        raise SourceError(f"{what}: audio is silent (peak {peak:.3g})")
    return out.astype(np.float32), 1.0


# ----------------------------------------------------------------------------- SoundFont


def find_soundfont(path: str | None = None) -> pathlib.Path:
    """Locate a General MIDI SoundFont (.sf2).

    Order: explicit ``path``, else env ``MORPHBOX_SOUNDFONT``, else the Debian
    fluid-soundfont-gm locations (/usr/share/sounds/sf2/FluidR3_GM.sf2,
    /usr/share/soundfonts/FluidR3_GM.sf2).  An explicit or env path that does not
    exist is an error (no silent fallback).  Raises SourceError.
    """
    for given, origin in (
        (path, "given"),
        (os.environ.get("MORPHBOX_SOUNDFONT"), "MORPHBOX_SOUNDFONT"),
    ):
        if given:
            p = pathlib.Path(given).expanduser()
            if not p.is_file():
                raise SourceError(f"SoundFont {p} ({origin}) does not exist")
            return p
    for p in _DEFAULT_SOUNDFONTS:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in _DEFAULT_SOUNDFONTS)
    raise SourceError(
        f"no General MIDI SoundFont found (looked in {looked}); install "
        "fluid-soundfont-gm (apt install fluid-soundfont-gm) or set MORPHBOX_SOUNDFONT"
    )


class SoundFontRenderer:
    """Offline, deterministic FluidSynth note renderer (no audio driver).

    ``with SoundFontRenderer() as r: note = r.render_note(42, 60)``.
    The SoundFont is loaded once (~0.5 s); each note is rendered on a brand-new
    FluidSynth synth (~2 ms) that shares the loaded SoundFont, so nothing (release
    tails, controller state, per-voice filter state) can carry over between notes.
    (Resetting and draining one synth is not enough: FluidSynth voice slots keep
    filter state from the previous note, which changes the first ~7 ms of the next.)
    Raises SourceError if FluidSynth or the SoundFont cannot be loaded.
    """

    _POLYPHONY = 64  # voices per synth; one GM note uses at most a handful
    _BLOCK = 1024  # frames per block when draining
    _MAX_DRAIN_SECONDS = 60.0

    def __init__(self, soundfont: str | None = None, render_rate: int = 48000):
        self._loader = None
        self.soundfont = find_soundfont(soundfont)
        if not isinstance(render_rate, int) or render_rate < SOURCE_SAMPLE_RATE:
            raise SourceError(
                f"render_rate must be an integer >= {SOURCE_SAMPLE_RATE} Hz, got {render_rate!r}"
            )
        self.render_rate = render_rate
        try:
            import fluidsynth
        except (ImportError, OSError) as e:  # ImportError also when libfluidsynth is missing
            raise SourceError(
                f"cannot load FluidSynth ({e}); install fluidsynth and pyfluidsynth"
            ) from e
        self._fs = fluidsynth
        lib = fluidsynth._fl
        for name, args in (
            (
                "fluid_synth_write_float",
                [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] * 2,
            ),
            ("fluid_synth_add_sfont", [ctypes.c_void_p, ctypes.c_void_p]),
            ("fluid_synth_remove_sfont", [ctypes.c_void_p, ctypes.c_void_p]),
            ("fluid_synth_get_sfont_by_id", [ctypes.c_void_p, ctypes.c_int]),
        ):
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_void_p if name.endswith("by_id") else ctypes.c_int
        self._lib = lib
        self._loader = self._new_synth()  # owns the loaded SoundFont
        sfid = self._loader.sfload(str(self.soundfont))
        self._sfont = (
            lib.fluid_synth_get_sfont_by_id(self._loader.synth, sfid) if sfid >= 0 else None
        )
        if not self._sfont:
            self.close()
            raise SourceError(f"FluidSynth could not load SoundFont {self.soundfont}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the SoundFont and synth; idempotent."""
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.delete()

    def _new_synth(self):
        # Dry output (reverb/chorus off): NSynth-like notes, no effect tails.
        return self._fs.Synth(
            gain=0.5,
            samplerate=self.render_rate,
            channels=16,
            **{
                "synth.reverb.active": 0,
                "synth.chorus.active": 0,
                "synth.polyphony": self._POLYPHONY,
            },
        )

    @contextlib.contextmanager
    def _fresh_synth(self):
        """Yield (new synth, SoundFont id) sharing the loaded SoundFont; frees the synth after."""
        if self._loader is None:
            raise SourceError("SoundFontRenderer is closed")
        synth = self._new_synth()
        try:
            sfid = self._lib.fluid_synth_add_sfont(synth.synth, self._sfont)
            if sfid < 0:
                raise SourceError(f"FluidSynth could not attach SoundFont {self.soundfont}")
            try:
                yield synth, sfid
            finally:
                for chan in range(16):  # else removing the SoundFont warns "No preset found"
                    synth.program_unset(chan)
                # Detach before delete: the SoundFont is shared and must not be freed.
                self._lib.fluid_synth_remove_sfont(synth.synth, self._sfont)
        finally:
            synth.delete()

    def _render(self, synth, frames: int) -> np.ndarray:
        """Render (frames, 2) float32 stereo (float: int16 get_samples() adds dither noise)."""
        buf = np.zeros((frames, 2), dtype=np.float32)
        ptr = buf.ctypes.data
        if self._lib.fluid_synth_write_float(synth.synth, frames, ptr, 0, 2, ptr, 1, 2) != 0:
            raise SourceError("FluidSynth failed to render audio")
        return buf

    def _silence(self, synth) -> None:
        """All sounds off + system reset, then render and discard until the output is
        exactly zero with no active voices."""
        self._fs.fluid_synth_all_sounds_off(synth.synth, -1)  # -1 = every channel
        synth.system_reset()
        for _ in range(int(self._MAX_DRAIN_SECONDS * self.render_rate / self._BLOCK)):
            if not np.any(self._render(synth, self._BLOCK)) and synth.get_active_voice_count() == 0:
                return
        raise SourceError(f"FluidSynth did not fall silent within {self._MAX_DRAIN_SECONDS} s")

    def _play(
        self, synth, sfid: int, program: int, pitch: int, velocity: int, bank: int, what: str,
        hold_s: float = HOLD_SECONDS, total_s: float = NOTE_SECONDS,
    ) -> np.ndarray:
        """Note-on, ``hold_s``, note-off, rest of ``total_s`` on ``synth``: (frames, 2)."""
        if synth.program_select(0, sfid, bank, program) != 0:
            raise SourceError(f"{what}: preset not in SoundFont")
        hold = round(hold_s * self.render_rate)
        total = round(total_s * self.render_rate)
        synth.noteon(0, pitch, velocity)
        held = self._render(synth, hold)
        synth.noteoff(0, pitch)
        return np.concatenate([held, self._render(synth, total - hold)])

    def render_audio(self, program: int, pitch: int, velocity: int = 100,
                     hold_s: float = HOLD_SECONDS, total_s: float = NOTE_SECONDS,
                     bank: int = 0) -> np.ndarray:
        """The raw render of one note: mono float64 at ``render_rate``, ``total_s`` long, note
        held ``hold_s``, not resampled, filtered or normalised (what a player would hear from
        FluidSynth: the benchmarks' reference). Raises SourceError like :meth:`render_note`."""
        program = _check_midi("program", program, 0)
        pitch = _check_midi("pitch", pitch, 0)
        velocity = _check_midi("velocity", velocity, 1)
        if not 0 < hold_s <= total_s:
            raise SourceError(f"need 0 < hold_s <= total_s, got {hold_s}, {total_s}")
        what = f"program {program} bank {bank} pitch {pitch} ({self.soundfont.name})"
        with self._fresh_synth() as (synth, sfid):
            self._silence(synth)
            stereo = self._play(synth, sfid, program, pitch, velocity, bank, what, hold_s,
                                total_s)
        return stereo.mean(axis=1).astype(np.float64)

    def render_note(
        self, program: int, pitch: int, velocity: int = 100, bank: int = 0
    ) -> SourceNote:
        """Render one note of ``program`` (GM 0..127) in ``bank`` (0 = GM melodic, 128 = drums).

        Note-on for HOLD_SECONDS, note-off, release until NOTE_SECONDS (longer tails are
        cut, with a 10 ms fade); stereo mixed to mono at 48 kHz, DC removed, at its own
        level.  Deterministic and independent of earlier notes.
        Raises SourceError for out-of-range arguments, a preset missing from the
        SoundFont, a note that renders silence, or a closed renderer.
        """
        program = _check_midi("program", program, 0)
        pitch = _check_midi("pitch", pitch, 0)
        velocity = _check_midi("velocity", velocity, 1)
        bank = _check_midi("bank", bank, 0, 16383)
        what = f"program {program} bank {bank} pitch {pitch} ({self.soundfont.name})"
        with self._fresh_synth() as (synth, sfid):
            self._silence(synth)
            stereo = self._play(synth, sfid, program, pitch, velocity, bank, what)
            self._silence(synth)
            name = (
                GM_PROGRAM_NAMES[program]
                if bank == 0
                else synth.sfpreset_name(sfid, bank, program) or f"bank {bank} program {program}"
            )
        audio, gain = _finish(stereo.mean(axis=1), self.render_rate, what, _RENDER_SILENCE_PEAK)
        return SourceNote(audio, pitch, velocity, name, gain, "midi")


# ----------------------------------------------------------------------------- WAV files

_NOTE_OFFSETS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_NSYNTH_RE = re.compile(r"-(\d{3})-(\d{3})$")  # instrument_family_source-PPP-VVV
_NOTE_RE = re.compile(r"(?<![A-Za-z])([A-Ga-g])([#b]?)(-1|\d)(?!\d)")
_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9#])(\d{1,3})(?![A-Za-z0-9])")


def pitch_from_filename(name: str) -> int | None:
    """MIDI pitch encoded in a file name (directories and extension ignored), or None.

    Tried in order:
    1. NSynth ``name-PPP-VVV`` ("cello-067-100.wav" -> 67, "guitar_acoustic_010-060-100" -> 60);
    2. a note name: letter A-G not preceded by a letter, optional ``#``/``b``, octave
       -1..9, not followed by a digit; C4 = 60 ("C4" -> 60, "c#3" -> 49,
       "Db5_soft" -> 73, "A-1" -> 9, i.e. "-1" after a note letter is octave -1);
    3. the first 1-3 digit number delimited by non-alphanumerics that is 0..127
       ("60.wav", "cello_60_100" -> 60).  Numbers glued to letters ("v100",
       "take2", "cello60") are ignored, so such names fall back to detection.
    """
    stem = pathlib.PurePath(name).name
    if pathlib.PurePath(stem).suffix.lower() in AUDIO_SUFFIXES:
        stem = pathlib.PurePath(stem).stem
    m = _NSYNTH_RE.search(stem)
    if m and int(m.group(1)) <= 127:
        return int(m.group(1))
    for m in _NOTE_RE.finditer(stem):
        letter, accidental, octave = m.groups()
        midi = (
            12 * (int(octave) + 1)
            + _NOTE_OFFSETS[letter.lower()]
            + {"#": 1, "b": -1, "": 0}[accidental]
        )
        if 0 <= midi <= 127:
            return midi
    for m in _NUMBER_RE.finditer(stem):
        if int(m.group(1)) <= 127:
            return int(m.group(1))
    return None


def load_wav(
    path, pitch: int | None = None, velocity: int = 100, instrument: str | None = None
) -> SourceNote:
    """Load one audio file as a SourceNote.

    Any sample rate / channel count / subtype soundfile reads; channels are averaged,
    resampled to 48 kHz (soxr VHQ), DC removed, trimmed/zero-padded to 4.5 s from the file
    start, at the file's own level.  Pitch: ``pitch`` argument (pitch_source "argument"), else
    :func:`pitch_from_filename` ("filename"), else :func:`detect_pitch` rounded
    ("detected").  ``instrument`` defaults to the parent folder name.
    Raises SourceError (naming the file) if unreadable, silent or unpitched.
    """
    path = pathlib.Path(path)
    velocity = _check_midi("velocity", velocity, 1)
    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError/TypeError
        raise SourceError(f"cannot read audio file {path}: {e}") from e
    if data.size == 0:
        raise SourceError(f"audio file {path} is empty")
    audio, gain = _finish(data.mean(axis=1), rate, f"audio file {path}", _FILE_SILENCE_PEAK)
    if pitch is not None:
        pitch, source = _check_midi("pitch", pitch, 0), "argument"
    elif (pitch := pitch_from_filename(path.name)) is not None:
        source = "filename"
    else:
        try:
            pitch, source = round(detect_pitch(audio, SOURCE_SAMPLE_RATE)[0]), "detected"
        except SourceError as e:
            raise SourceError(
                f"audio file {path}: {e}; put the MIDI note in the file name, "
                "e.g. 'C4.wav' or '60.wav'"
            ) from e
        pitch = min(max(pitch, 0), 127)
    return SourceNote(
        audio, pitch, velocity, instrument or path.resolve().parent.name, gain, source
    )


def load_wav_folder(folder) -> list[SourceNote]:
    """Load every *.wav/*.flac/*.aiff/*.aif (case-insensitive, not recursive) in ``folder``.

    instrument = folder name; returned sorted by (pitch, file name).
    Raises SourceError if the folder is missing or has no audio files, or naming the
    first file that cannot be loaded.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )
    if not files:
        raise SourceError(f"no audio files ({'/'.join(AUDIO_SUFFIXES)}) in {folder}")
    name = folder.resolve().name
    notes = [(load_wav(p, instrument=name), p.name) for p in files]
    return [n for n, _ in sorted(notes, key=lambda t: (t[0].pitch, t[1]))]


# ----------------------------------------------------------------------------- pitch analysis


def _analysis_input(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    y = np.asarray(audio, dtype=np.float64)
    if y.ndim != 1 or y.size == 0 or not np.all(np.isfinite(y)):
        raise SourceError(f"expected non-empty finite 1-D audio, got shape {y.shape}")
    if not sample_rate or sample_rate <= 0:
        raise SourceError(f"sample_rate must be positive, got {sample_rate!r}")
    return y


def _frame_length(sample_rate: int, fmin: float) -> int:
    """Power-of-two frame holding > 2 periods of fmin (pyin's recommendation), >= 1024."""
    return max(1024, 1 << math.ceil(math.log2(2.1 * sample_rate / fmin)))


def _narrow_cents(y: np.ndarray, sample_rate: int, midi: float) -> np.ndarray:
    """Deviation in cents from ``midi`` of each voiced pyin frame (empty if none).

    pyin restricted to +-1 semitone at 1-cent resolution, made accurate to ~1 cent:
    low-pass at 2.5 x f0 (stretched upper partials, e.g. piano inharmonicity, bias the
    periodicity sharp by 10-20 cents), upsample so a period spans >= 64 samples
    (high notes), and frames of >= 32 periods (YIN reads smooth waveforms several
    cents sharp with only 2-3 periods per frame).
    """
    import librosa
    import scipy.signal

    f_ref = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    fmin, fmax = f_ref * 2 ** (-1 / 12), f_ref * 2 ** (1 / 12)
    if fmax >= 0.45 * sample_rate:
        return np.empty(0)
    if 2.5 * f_ref < 0.45 * sample_rate:
        y = scipy.signal.sosfiltfilt(
            scipy.signal.butter(8, 2.5 * f_ref, fs=sample_rate, output="sos"), y
        )
    sr = sample_rate * max(1, math.ceil(64 * f_ref / sample_rate))
    if sr != sample_rate:
        y = soxr.resample(y, sample_rate, sr, quality="VHQ")
    period = sr / fmin
    frame = min(1 << math.ceil(math.log2(32 * period)), 1 << int(math.log2(max(len(y), 1))))
    if frame < 2.2 * period:
        return np.empty(0)
    hop = max(1, round(0.016 * sr))
    f0, voiced, _ = librosa.pyin(
        y,
        fmin=fmin,
        fmax=fmax,
        sr=sr,
        frame_length=frame,
        hop_length=hop,
        center=False,
        resolution=0.01,
        max_transition_rate=sr / (12 * hop),
    )
    f0 = f0[voiced & np.isfinite(f0)]
    return 1200.0 * np.log2(f0 / f_ref)


def detect_pitch(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Estimate the pitch of a note (first NOTE_SECONDS analysed, at 16 kHz).

    Coarse pyin over 30..4200 Hz (2048-sample frames, 64 ms hop, quarter-semitone
    bins); the median over voiced frames is refined to ~1 cent by the narrow pass of
    :func:`pitch_error_cents` on the 1 s following the first voiced frame.
    Returns (fractional MIDI pitch, voiced fraction 0..1 of the coarse frames).
    Raises SourceError for bad input or if no frame is voiced.  ~0.1 s per note (plus
    a one-off numba compile inside librosa on first use).
    """
    import librosa

    y = _analysis_input(audio, sample_rate)
    if sample_rate != _DETECT_RATE:
        y = soxr.resample(y, sample_rate, _DETECT_RATE, quality="HQ")
    y = y[:NOTE_SAMPLES]
    hop = 1024
    f0, voiced, _ = librosa.pyin(
        y,
        fmin=_DETECT_FMIN,
        fmax=_DETECT_FMAX,
        sr=_DETECT_RATE,
        frame_length=_frame_length(_DETECT_RATE, _DETECT_FMIN),
        hop_length=hop,
        resolution=0.25,
    )
    good = voiced & np.isfinite(f0)
    if not np.any(good):
        raise SourceError("no pitched (voiced) frames found")
    coarse = float(np.median(librosa.hz_to_midi(f0[good])))
    start = int(np.argmax(good)) * hop + _DETECT_RATE // 10
    cents = _narrow_cents(y[start : start + _DETECT_RATE], _DETECT_RATE, coarse)
    pitch = coarse + float(np.median(cents)) / 100.0 if cents.size else coarse
    return pitch, float(np.mean(voiced))


def pitch_error_cents(audio: np.ndarray, sample_rate: int, expected_pitch: float) -> float:
    """Median deviation (cents) of the held part of a note from ``expected_pitch`` (MIDI).

    Analyses 0.2 s .. min(HOLD_SECONDS, 1.2 s) (at most 1 s) with pyin restricted to
    +-1 semitone, 1-cent resolution, after a low-pass at 2.5 x f0 (so piano-like
    inharmonic partials don't read sharp); accurate to ~2 cents on harmonic tones.
    Returns nan if no frame is voiced (also when the audio is shorter than 0.2 s).
    Fast: ~0.04 s per note after librosa's first use.  Raises SourceError for bad input.
    """
    y = _analysis_input(audio, sample_rate)
    y = y[int(0.2 * sample_rate) : int(min(HOLD_SECONDS, 1.2) * sample_rate)]
    if y.size == 0:
        return float("nan")
    cents = _narrow_cents(y, sample_rate, float(expected_pitch))
    return float(np.median(cents)) if cents.size else float("nan")
