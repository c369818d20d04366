"""The package as a user installs it: one ``morphbox`` namespace, every shipped file inside,
no bare top-level ``device``/``kernels``/``hardware``/``host_tools``, and no bare imports left
in the source (the lint rule)."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("device", "kernels", "hardware", "host_tools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel .`` of this checkout (what ``pip install .`` installs)."""
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=600, cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("morphbox-*.whl")
    return whl


def test_the_wheel_holds_only_the_morphbox_namespace_and_every_shipped_file(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"morphbox", next(t for t in tops if t.endswith(".dist-info"))}
    assert "morphbox/__init__.py" not in names  # a PEP 420 namespace
    # every file of the shipped pack, models, profiles, web page and assets is package data
    shipped = [p.relative_to(ROOT).as_posix() for folder in FOLDERS
               for p in (ROOT / folder).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    missing = [s for s in shipped if f"morphbox/{s}" not in names]
    assert not missing, f"not installed by `pip install .`: {missing}"
    assert "morphbox/device/packs/default/decoder.tflite" in names


def test_a_fresh_venv_imports_morphbox_and_no_bare_names(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True).stdout.strip()
    installed = {p.name for p in Path(site).iterdir()}
    assert not installed & set(FOLDERS), installed
    code = ("import importlib.util as u, sys\n"
            "assert u.find_spec('morphbox.device.engine.voices') is not None\n"
            "import morphbox.device.common\n"
            "for bare in ('device', 'kernels', 'hardware', 'host_tools'):\n"
            "    assert u.find_spec(bare) is None, bare\n")
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr


def test_no_bare_imports_in_the_source():
    """The ruff rule (TID251 banned-api in pyproject.toml) keeps ``import device`` out."""
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "TID251",
                          "--output-format", "concise", str(ROOT)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
