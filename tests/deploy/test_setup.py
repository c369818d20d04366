"""deploy/setup.sh: the dry run prints every step and changes nothing; --root applies the file
steps to a fake Raspberry Pi OS root, idempotently; the systemd unit has what the box needs."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "deploy" / "setup.sh"


def _run(*args, check=True):
    res = subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True,
                         timeout=60)
    if check:
        assert res.returncode == 0, res.stderr + res.stdout
    return res


def _fake_root(tmp_path):
    root = tmp_path / "root"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text(
        "# stock\ndtparam=audio=on\ncamera_auto_detect=1\n")
    return root


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    root = _fake_root(tmp_path)
    before = (root / "boot/firmware/config.txt").read_text()
    out = _run("--dry-run", "--root", str(root), "--hat", "iqaudio-dacplus").stdout
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert [s.split("]")[0] for s in steps] == [f"[{i}/10" for i in range(1, 11)]
    for text in ("would run: apt-get update", "portaudio19-dev", "i2c-tools",
                 "usermod -aG audio,i2c,gpio morphbox", "python3 -m venv /opt/morphbox/.venv",
                 "dtparam=i2c_arm_baudrate=400000", "dtoverlay=midi-uart0", "enable_uart=1",
                 "dtoverlay=iqaudio-dacplus", "raspi-config nonint do_serial_cons 1",
                 "would create: /var/lib/morphbox",
                 "would write: /etc/systemd/system/morphbox.service",
                 "systemctl enable morphbox-cpu-performance.service morphbox.service"):
        assert text in out, text
    assert (root / "boot/firmware/config.txt").read_text() == before
    assert sorted(p.name for p in root.rglob("*")) == ["boot", "config.txt", "firmware"]


def test_root_mode_is_idempotent_and_keeps_the_users_config(tmp_path):
    root = _fake_root(tmp_path)
    opts = ("--root", str(root), "--profile", "nsynth-super", "--i2c-hz", "640000",
            "--bind", "0.0.0.0:8750")
    first = _run(*opts).stdout
    assert "changed: wrote /boot/firmware/config.txt" in first
    cfg = (root / "boot/firmware/config.txt").read_text()
    second = _run(*opts).stdout
    assert "changed" not in second and "ok: /boot/firmware/config.txt up to date" in second
    assert (root / "boot/firmware/config.txt").read_text() == cfg
    assert cfg.count("# >>> morphbox") == 1 and "camera_auto_detect=1" in cfg
    assert "#dtparam=audio=on" in cfg and "dtparam=audio=off" in cfg
    assert "dtparam=i2c_arm_baudrate=640000" in cfg and "dtoverlay=midi-uart0" in cfg
    env = (root / "etc/default/morphbox").read_text()
    assert "MORPHBOX_PROFILE=nsynth-super" in env and "MORPHBOX_BIND=0.0.0.0:8750" in env
    assert (root / "etc/modules-load.d/morphbox.conf").read_text().strip().endswith("i2c-dev")
    assert (root / "var/lib/morphbox").is_dir()
    unit = root / "etc/systemd/system/morphbox.service"
    assert unit.read_bytes() == (REPO / "deploy/morphbox.service").read_bytes()


def test_bad_options_are_refused():
    res = _run("--dry-run", "--profile", "moog", check=False)
    assert res.returncode == 2 and "unknown profile 'moog'" in res.stderr


def test_unit_restarts_gets_realtime_and_a_writable_state_dir_only():
    ini = configparser.ConfigParser(strict=False, interpolation=None)
    ini.optionxform = str
    ini.read(REPO / "deploy/morphbox.service")
    svc = ini["Service"]
    assert svc["Restart"] == "on-failure" and svc["LimitRTPRIO"] == "95"
    assert svc["LimitMEMLOCK"] == "infinity" and svc["StateDirectory"] == "morphbox"
    assert svc["ProtectSystem"] == "strict"
    assert "--api --bind ${MORPHBOX_BIND}" in svc["ExecStart"]
    gov = (REPO / "deploy/morphbox-cpu-performance.service").read_text()
    assert "echo performance >" in gov
