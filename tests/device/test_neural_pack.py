"""Neural packs (format version 3): round trip, refusals, deterministic build, device rebuild.

The tiny test models are made by TensorFlow in a *subprocess* (as in test_neural.py: the
device side never imports TensorFlow, and a TFLite runtime may break when TensorFlow was
imported first in the process). They are untrained (seeded random weights): these tests are
about the pack mechanics, not sound quality.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from morphbox.device.engine.corners import CornerSelector, build_grid
from morphbox.device.packs.format import (
    MANIFEST,
    MEMBERS,
    NEURAL_MEMBERS,
    PackError,
    grid_from_pack,
    load_pack,
    write_pack,
)

pytest.importorskip("ai_edge_litert")

_MAKE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import keras
    import numpy as np
    from morphbox.host_tools.model.export import export_tflite
    from morphbox.host_tools.model.network import ModelConfig, build_decoder, build_encoder

    out = Path(sys.argv[1])
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(encoder_channels=16, encoder_layers=1, decoder_channels=32,
                      decoder_layers=2)
    enc, dec = build_encoder(cfg), build_decoder(cfg)
    rng = np.random.default_rng(0)
    rep = []
    for _ in range(8):
        f = {"f0_midi": np.full((1, 20), rng.uniform(30, 90), np.float32),
             "loudness_db": rng.uniform(-70, -10, (1, 20)).astype(np.float32),
             "harmonic_db": rng.uniform(-120, -10, (1, 20, 64)).astype(np.float32),
             "envelope_db": rng.uniform(-120, -30, (1, 20, 24)).astype(np.float32),
             "noise_db": rng.uniform(-120, -40, (1, 20, 32)).astype(np.float32)}
        z = np.asarray(enc(f)["z"], np.float32)
        rep += [("encode", f), ("decode", {"z": z, "f0_midi": f["f0_midi"],
                                          "loudness_db": f["loudness_db"]})]
    export_tflite(enc, dec, out / "tiny_int8.tflite", "int8", rep)
    export_tflite(enc, dec, out / "encode_only.tflite", signatures=("encode",))
""")

D = {"instruments": 4, "anchors": 2, "frames": 6, "harmonics": 64, "envelope_bands": 24,
     "noise_bands": 32, "grid": 3, "z_dims": 16, "layers": 2, "rates": 2}
D["channels"] = D["harmonics"] + D["envelope_bands"] + D["noise_bands"]


@pytest.fixture(scope="session")
def models(tf_subprocess) -> Path:
    return tf_subprocess(_MAKE, "neural_pack_models")


def parts(model: bytes | None, seed: int = 0) -> tuple[dict, dict]:
    """Manifest fields and members of a small pack; neural when ``model`` is given."""
    rng = np.random.default_rng(seed)
    manifest = {
        "name": "tiny", "mode": "spectral",
        "instruments": [{"name": f"inst{i}"} for i in range(D["instruments"])],
        "pitch_anchors": [48, 60], "frames": D["frames"], "harmonics": D["harmonics"],
        "envelope_bands": D["envelope_bands"], "noise_bands": D["noise_bands"],
        "grid_size": D["grid"], "frame_times": [0.0, 0.004, 0.008, 0.1, 0.12, 0.14],
        "source_sample_rate": 48000, "velocity": 100, "velocity_layers": [40, 100],
        "loop": {"start": 2, "end": 5, "style": "forward", "crossfade_s": 0.02},
        "corners": {"NW": 0, "NE": 1, "SW": 2, "SE": 3},
    }
    arrays = {}
    for member, (dtype, dims) in MEMBERS.items():
        shape = tuple(D[x] for x in dims)
        arrays[member[:-4]] = (rng.integers(100, 200, shape, dtype=np.uint8)
                               if dtype == "uint8" else
                               rng.integers(-20, 20, shape, dtype=np.int8)
                               if dtype == "int8" else
                               rng.uniform(0, 1, shape).astype(dtype))
    if model is not None:
        manifest["mode"] = "neural"
        manifest["model"] = {"version": "tiny", "sha256": hashlib.sha256(model).hexdigest(),
                             "quantization": "int8", "z_dims": D["z_dims"]}
        for member, (dtype, dims) in NEURAL_MEMBERS.items():
            shape = tuple(D[x] for x in dims)
            arrays[member[:-4]] = (rng.integers(-127, 128, shape, dtype=np.int8)
                                   if dtype == "int8" else np.full(shape, 1 / 127, dtype))
        arrays["decoder"] = model
    return manifest, arrays


@pytest.fixture
def neural(models, tmp_path) -> Path:
    manifest, arrays = parts((models / "tiny_int8.tflite").read_bytes())
    return write_pack(tmp_path / "neural", manifest, arrays)


def _edit(path: Path, fn) -> None:
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


def _replace(path: Path, member: str, data: bytes, fix_hash: bool = True) -> None:
    (path / member).write_bytes(data)
    if fix_hash:
        def fn(m):
            m["members"][member]["sha256"] = hashlib.sha256(data).hexdigest()
            if member == "decoder.tflite":
                m["model"]["sha256"] = hashlib.sha256(data).hexdigest()
        _edit(path, fn)


def _refusal(path: Path) -> str:
    with pytest.raises(PackError) as exc:
        load_pack(path)
    return str(exc.value)


# ------------------------------------------------------------------------------ format


def test_neural_pack_round_trip_is_version_3(neural, models):
    pack = load_pack(neural)
    m = pack.manifest
    assert m["format_version"] == 3 and m["mode"] == "neural" and pack.is_neural
    blob = (models / "tiny_int8.tflite").read_bytes()
    assert pack.blobs["decoder"] == blob and "decoder" not in pack.arrays
    assert m["members"]["decoder.tflite"] == {"sha256": hashlib.sha256(blob).hexdigest(),
                                              "bytes": len(blob), "kind": "tflite"}
    z = pack.arrays["instruments_z"]
    assert z.dtype == np.int8 and z.shape == (4, 2, 6, 16)
    assert pack.decoder is not None and pack.decoder.z_dims == 16
    np.testing.assert_allclose(pack.z_corners([1])[0], z[1] / 127, rtol=1e-6)


def test_spectral_packs_are_version_3_too(tmp_path):
    manifest, arrays = parts(None)
    pack = load_pack(write_pack(tmp_path / "spec", manifest, arrays))
    assert pack.manifest["format_version"] == 3 and pack.decoder is None and not pack.blobs
    assert not pack.is_neural
    # a spectral grid is rebuilt by mixing dB frames: its corners are the instruments
    grid = build_grid(pack, {"NW": 3, "NE": 2, "SW": 1, "SE": 0})
    from morphbox.kernels.quant import dequantize_db
    harm = dequantize_db(arrays["instruments_harmonics"])
    assert np.array_equal(grid.harmonics_db[0, 0], harm[3])
    assert np.array_equal(grid.harmonics_db[-1, -1], harm[0])


@pytest.mark.parametrize("member", ["instruments_z.npy", "instruments_z_scale.npy",
                                    "decoder.tflite"])
def test_neural_pack_without_its_model_members_is_refused(neural, member):
    (neural / member).unlink()
    _edit(neural, lambda m: m["members"].pop(member))
    msg = _refusal(neural)
    assert "neural pack lacks its model member" in msg and member in msg


def test_neural_pack_without_model_record_is_refused(neural):
    _edit(neural, lambda m: m.pop("model"))
    assert "no model record" in _refusal(neural)


def test_decoder_with_wrong_signature_is_refused(neural, models):
    _replace(neural, "decoder.tflite", (models / "encode_only.tflite").read_bytes())
    msg = _refusal(neural)
    assert "member decoder.tflite is not a usable decoder" in msg and "'decode'" in msg


def test_decoder_that_is_not_a_model_is_refused(neural):
    _replace(neural, "decoder.tflite", b"\x00not a flatbuffer" * 64)
    assert "decoder.tflite" in _refusal(neural)


def test_model_z_size_that_differs_from_the_decoder_is_refused(neural):
    # z member re-shaped and re-hashed consistently: only the decoder check can catch it
    import io
    z = np.zeros((4, 2, 6, 8), np.int8)
    buf = io.BytesIO()
    np.save(buf, z)
    _replace(neural, "instruments_z.npy", buf.getvalue())
    _edit(neural, lambda m: m["model"].update(z_dims=8))
    msg = _refusal(neural)
    assert "decoder.tflite" in msg and "16 z size, expected 8" in msg


def test_mismatched_z_shape_is_refused(neural):
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 2, 6, 8), np.int8))
    _replace(neural, "instruments_z.npy", buf.getvalue())
    msg = _refusal(neural)
    assert "instruments_z.npy" in msg and "[4, 2, 6, 16]" in msg


def test_bit_flip_in_decoder_is_refused(neural):
    data = bytearray((neural / "decoder.tflite").read_bytes())
    data[len(data) // 2] ^= 1
    _replace(neural, "decoder.tflite", bytes(data), fix_hash=False)
    assert "decoder.tflite is corrupt" in _refusal(neural)


def test_model_hash_must_name_the_decoder(neural):
    _edit(neural, lambda m: m["model"].update(sha256="0" * 64))
    assert "model.sha256" in _refusal(neural)


def test_a_version_2_neural_pack_is_refused_with_how_to_rebuild_it(neural):
    _edit(neural, lambda m: m.update(format_version=2))
    msg = _refusal(neural)
    assert "version 2 (neural, 16 kHz)" in msg and "morphbox pack build" in msg


@pytest.mark.parametrize("value", [True, {"anchor_corners": "yes"}, []])
def test_neural_grid_record_must_be_well_formed(neural, value):
    _edit(neural, lambda m: m.update(neural_grid=value))
    assert "anchor_corners is true or false" in _refusal(neural)


def test_tflite_member_in_a_spectral_pack_is_refused(tmp_path):
    manifest, arrays = parts(None)
    with pytest.raises(PackError, match="only a neural pack carries a model"):
        write_pack(tmp_path / "spec", manifest, dict(arrays, decoder=b"x" * 10))
    assert not (tmp_path / "spec").exists()


# ------------------------------------------------------------------------------ build, device


@pytest.fixture(scope="module")
def built(models, tmp_path_factory, skip_or_fail):
    from morphbox.host_tools.packbuild import InstrumentSpec, PackSettings, build_pack
    from morphbox.host_tools.sources import SourceError, find_soundfont
    try:
        find_soundfont()
    except SourceError as exc:
        skip_or_fail(str(exc))
    settings = PackSettings(
        name="neural-small",
        instruments=tuple(InstrumentSpec(n, program=p) for n, p in
                          (("Cello", 42), ("Flute", 73), ("Piano", 0), ("Organ", 19),
                           ("Sawtooth", 81))),
        corners={"NW": 0, "NE": 1, "SW": 2, "SE": 3}, anchors=(48, 72), grid_size=3,
        mode="neural", model=str(models / "tiny_int8.tflite"), seed=3)
    out = tmp_path_factory.mktemp("built")
    return settings, build_pack(out / "a", settings, jobs=1, progress=False), out


def test_neural_build_writes_a_neural_pack(built, models):
    _, path, _ = built
    pack = load_pack(path)
    m = pack.manifest
    assert m["format_version"] == 3 and m["mode"] == "neural"
    blob = (models / "tiny_int8.tflite").read_bytes()
    assert m["model"] == {"version": "tiny_int8", "sha256": hashlib.sha256(blob).hexdigest(),
                          "quantization": "int8", "z_dims": 16}
    z = pack.arrays["instruments_z"]
    assert z.shape == (5, 2, m["frames"], 16) and np.abs(z).max() == 127
    grid = grid_from_pack(pack)
    assert np.isfinite(grid.frames_db).all() and grid.harmonics_db.max() > -100
    # the device's rebuild for the pack's own corners is the stored grid, code for code
    assert np.array_equal(build_grid(pack, pack.corners).frames_db, grid.frames_db)


def test_anchored_corners_are_the_instruments_and_the_inside_keeps_the_latent_morph(built):
    """Corner anchoring (device/engine/corners.py): grid = decode(mixed z) + the corners' decoding
    errors mixed with the same bilinear weights, so each corner is its analysed instrument
    code for code, and the grid minus a plain dB mix is what the decoder adds."""
    from morphbox.device.engine.corners import decode_grid
    from morphbox.kernels.grid import corner_weights
    from morphbox.kernels.quant import dequantize_db
    _, path, _ = built
    pack = load_pack(path)
    assert pack.manifest["neural_grid"] == {"anchor_corners": True}
    idx = [pack.corners[c] for c in ("NW", "NE", "SW", "SE")]
    grid_h = pack.arrays["grid_harmonics"]
    inst_h = pack.arrays["instruments_harmonics"][idx]
    for k, (y, x) in enumerate([(0, 0), (0, -1), (-1, 0), (-1, -1)]):
        assert np.array_equal(grid_h[y, x], inst_h[k])
        for part in ("envelope", "noise"):
            assert np.array_equal(pack.arrays[f"grid_{part}"][y, x],
                                  pack.arrays[f"instruments_{part}"][idx[k]])
    # the same decoder without anchoring: corners are its reconstructions, not the instruments
    plain = decode_grid(pack.decoder, pack.z_corners(idx),
                        pack.arrays["instruments_loudness"][idx],
                        pack.manifest["pitch_anchors"], 3)[..., :64]
    error = dequantize_db(inst_h) - plain[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.abs(error).max() > 3.0  # (an untrained decoder: far from the instruments)
    w = corner_weights(np.array([0.0, 0.5, 1.0])[None, :], np.array([0.0, 0.5, 1.0])[:, None])
    want = plain + np.einsum("yxc,c...->yx...", w, error)
    got = dequantize_db(grid_h)
    # anchored, and then levelled to the corners' power mix: the same gain for every partial
    # of a frame (compare where nothing involved was clipped at the -120 dB floor)
    corners = plain[[0, 0, -1, -1], [0, -1, 0, -1]]
    inside = (plain > -119.5) & (want > -119.5) & (corners > -119.5).all(axis=0) \
        & (dequantize_db(inst_h) > -119.5).all(axis=0)
    assert inside.mean() > 0.2  # (high anchors have few partials under 20 kHz)
    # (frames before the loop's crossfade: there the grid's difference from the dB mix is
    # crossfaded towards the loop start, channel by channel, to keep the loop seamless)
    m = pack.manifest
    t = np.asarray(m["frame_times"])
    before = t < t[m["loop"]["end"]] - m["loop"]["crossfade_s"] - 1e-9
    d = np.where(inside, got - want, np.nan)[:, :, :, before]
    spread = np.nanmax(d, axis=-1) - np.nanmin(d, axis=-1)  # per frame, over partials
    assert np.nanmax(spread) <= 1.0  # one level per frame, plus half-code roundings


def test_neural_build_is_deterministic_for_a_seed(built):
    from morphbox.host_tools.packbuild import build_pack
    settings, path, out = built
    again = build_pack(out / "b", settings, jobs=2, progress=False)
    a = json.loads((path / MANIFEST).read_text())["members"]
    b = json.loads((again / MANIFEST).read_text())["members"]
    assert {k: v["sha256"] for k, v in a.items()} == {k: v["sha256"] for k, v in b.items()}


def test_neural_build_needs_a_model_with_an_encoder(models, tmp_path):
    from morphbox.host_tools.packbuild import PackSettings, build_pack
    with pytest.raises(ValueError, match="needs a model"):
        build_pack(tmp_path / "x", PackSettings(mode="neural"), progress=False)
    with pytest.raises(ValueError, match="'decode'"):
        build_pack(tmp_path / "x", PackSettings(mode="neural",
                                                model=str(models / "encode_only.tflite")),
                   progress=False)
    assert not (tmp_path / "x").exists()


def test_device_rebuilds_a_neural_grid_for_other_corners_while_playing(built):
    from morphbox.device.engine.voices import Engine
    _, path, _ = built
    pack = load_pack(path)
    engine = Engine(grid_from_pack(pack))
    engine.note_on(60, 100)
    engine.render_block()
    before = engine.grid
    changes = []
    sel = CornerSelector(engine, pack, on_change=lambda c, s: changes.append((c, s)))
    sel.select({"NW": 4})
    assert sel.wait(60) and sel.last_error is None
    assert engine.grid is not before and changes[-1][0]["NW"] == 4
    assert 0 < sel.last_seconds < 5
    diff = np.abs(engine.grid.frames_db - before.frames_db)
    assert diff[0, 0].max() > 1.0  # the NW corner changed ...
    assert np.array_equal(engine.grid.frames_db[-1, -1], before.frames_db[-1, -1])  # SE not
    out = np.concatenate([engine.render_block()[:, 0] for _ in range(50)])
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-4
    sel.select({"SE": 42})
    assert sel.wait(60) and "no such instrument" in sel.last_error


def test_neural_pack_survives_a_signed_archive(neural, tmp_path):
    """A neural pack (with its .tflite decoder) archives, verifies and extracts byte for byte."""
    from tests.device.test_archive import archive_of, extract, new_key, trusted
    key = new_key()
    arc = archive_of(neural, key, tmp_path / "n.mbpack")
    out = tmp_path / "out"
    extract(arc, out, trusted(key))
    pack = load_pack(out)
    assert pack.is_neural
    assert (out / "decoder.tflite").read_bytes() == (neural / "decoder.tflite").read_bytes()


_NO_RUNTIME = textwrap.dedent("""
    import sys
    sys.modules["ai_edge_litert"] = None  # neither runtime can be imported in this process
    sys.modules["tflite_runtime"] = None
    import numpy as np
    from morphbox.device.engine.corners import CornerSelector
    from morphbox.device.engine.voices import Engine, render_offline
    from morphbox.device.packs.format import DEFAULT_PACK, PackError, grid_from_pack, load_pack
    pack = load_pack(DEFAULT_PACK)
    assert pack.is_neural and pack.decoder is None
    assert "no TFLite runtime" in pack.decoder_error
    engine = Engine(grid_from_pack(pack))
    engine.note_on(60, 100)
    audio = render_offline(engine, 48000)[:, 0]
    before = engine.grid
    sel = CornerSelector(engine, pack)
    sel.select({"NW": 5})
    assert sel.wait(60) and engine.grid is before
    print("rms", float(np.sqrt(np.mean(audio ** 2))))
    print("error", sel.last_error)
""")


def test_without_a_tflite_runtime_the_neural_default_pack_still_plays():
    """No TFLite runtime installed (a hand-made install): the built-in neural pack loads, its
    stored grid plays, and a corner change is refused with the reason; nothing else breaks."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", _NO_RUNTIME], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert float(out["rms"]) > 0.01
    assert "cannot decode a grid for other corners: no TFLite runtime" in out["error"]
    assert "the stored grid plays on" in out["error"]
