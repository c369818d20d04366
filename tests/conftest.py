"""Shared, generic pytest fixtures.

* ``skip_or_fail``: skip a test for a missing prerequisite -- but fail under CI (``CI=true``),
  where every prerequisite must be installed.
* ``jack_server``: a real JACK server with the dummy driver (a real-time-paced audio clock, no
  sound card needed), running for the whole session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

# One numba cache for the whole run, subprocesses included: the compiled render kernel
# (morphbox.kernels.compiled) is compiled once and loaded everywhere else (a service would
# otherwise keep it in each test's state dir and compile it there again).
os.environ.setdefault("NUMBA_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "morphbox-tests-numba-cache"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_or_fail(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def skip_or_fail() -> Callable[[str], NoReturn]:
    """``skip_or_fail(reason)``: pytest.skip locally, pytest.fail when CI=true."""
    return _skip_or_fail


# --------------------------------------------------------------------------------------------
# JACK


@dataclass(frozen=True)
class JackServer:
    """A running ``jackd`` (dummy driver). Clients reach it through ``JACK_DEFAULT_SERVER=name``,
    which the fixture sets in ``os.environ`` (so PortAudio/PyAudio in this process and every
    subprocess, e.g. ``jack_lsp``, connect to it)."""

    name: str
    sample_rate: int
    period: int  # frames per JACK cycle
    pid: int
    log_path: Path


JACK_SAMPLE_RATE = 48000
JACK_PERIOD = 128
JACK_START_TIMEOUT_S = 20.0


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _jack_ready(env: dict[str, str]) -> bool:
    """The server answers and has its dummy ports."""
    jack_lsp = shutil.which("jack_lsp")
    if jack_lsp is not None:
        try:
            res = subprocess.run(
                [jack_lsp], env=env, capture_output=True, text=True, timeout=10, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0 and "system:playback_1" in res.stdout
    # No jack_lsp: ask PortAudio (in a subprocess, not to initialise it in this process).
    probe = (
        "import pyaudio, sys; p = pyaudio.PyAudio(); "
        "ok = any('JACK' in p.get_host_api_info_by_index(i)['name'] "
        "and p.get_host_api_info_by_index(i)['deviceCount'] > 0 "
        "for i in range(p.get_host_api_count())); p.terminate(); sys.exit(0 if ok else 1)"
    )
    try:
        res = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    """Start ``jackd --no-realtime -d dummy -r 48000 -p 128`` under a unique server name.

    Skips if jackd is not installed (fails under CI=true). Sets ``JACK_DEFAULT_SERVER`` for the
    rest of the session (restored at the end) and kills the server at teardown.
    """
    jackd = shutil.which("jackd")
    if jackd is None:
        _skip_or_fail("jackd is not installed (apt-get install -y jackd2)")
    name = f"morphbox-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    log_path = tmp_path_factory.mktemp("jack") / "jackd.log"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_AUDIO_RESERVATION="1")
    cmd = [
        jackd, "-n", name, "--no-realtime",
        "-d", "dummy", "-r", str(JACK_SAMPLE_RATE), "-p", str(JACK_PERIOD),
    ]  # fmt: skip
    setpriv = shutil.which("setpriv")  # util-linux
    if setpriv is not None:
        # jackd gets SIGTERM if pytest dies without tearing down (SIGKILL, CI timeout...).
        cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not jackd
        )
    try:
        deadline = time.monotonic() + JACK_START_TIMEOUT_S
        while not _jack_ready(env):
            if proc.poll() is not None:
                pytest.fail(
                    f"jackd exited with status {proc.returncode}: {' '.join(cmd)}\n"
                    f"{_log_tail(log_path)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jackd did not come up within {JACK_START_TIMEOUT_S:g} s: {' '.join(cmd)}\n"
                    f"{_log_tail(log_path)}",
                    pytrace=False,
                )
            time.sleep(0.1)
        saved = os.environ.get("JACK_DEFAULT_SERVER")
        os.environ["JACK_DEFAULT_SERVER"] = name
        try:
            yield JackServer(
                name=name,
                sample_rate=JACK_SAMPLE_RATE,
                period=JACK_PERIOD,
                pid=proc.pid,
                log_path=log_path,
            )
        finally:
            if saved is None:
                os.environ.pop("JACK_DEFAULT_SERVER", None)
            else:
                os.environ["JACK_DEFAULT_SERVER"] = saved
    finally:
        _stop_process(proc)


@pytest.fixture(scope="session")
def tf_subprocess(tmp_path_factory, skip_or_fail):
    """Run a TensorFlow script in a subprocess, writing into a fresh folder.

    TensorFlow must not load in the test process before the TFLite runtime does (REFERENCE.md),
    so test models are built out of process. Returns ``make(script, name) -> folder``; the
    script gets the folder as ``sys.argv[1]``.
    """
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        skip_or_fail("tensorflow (host extra) is needed to make the test models")
    root = Path(__file__).resolve().parents[1]

    def make(script: str, name: str) -> Path:
        out = tmp_path_factory.mktemp(name)
        res = subprocess.run([sys.executable, "-c", script, str(out)], cwd=root,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return out

    return make
