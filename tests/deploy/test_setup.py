"""deploy/setup.sh: the dry run prints every step and changes nothing; --root applies the file
steps to a fake Raspberry Pi OS root, idempotently; the systemd unit has what the box needs."""

from __future__ import annotations

import configparser
import os
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
    assert [s.split("]")[0] for s in steps] == [f"[{i}/12" for i in range(1, 13)]
    for text in ("would run: apt-get update", "portaudio19-dev", "i2c-tools",
                 "build-essential", "python3-dev", "libasound2-dev", "libjack-jackd2-dev",
                 "usermod -aG audio,i2c,gpio,dialout morphbox",
                 "python3 -m venv /opt/morphbox/.venv",
                 "dtparam=i2c_arm_baudrate=400000", "dtoverlay=midi-uart0", "enable_uart=1",
                 "dtoverlay=iqaudio-dacplus", "raspi-config nonint do_serial_cons 1",
                 "would create: /var/lib/morphbox",
                 "would write: /etc/systemd/system/morphbox.service",
                 "systemctl enable morphbox-cpu-performance.service morphbox.service",
                 "systemctl disable hciuart.service", "import morphbox.device.engine.process"):
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


def _section(cfg: str, name: str) -> list[str]:
    """The lines of config.txt section ``[name]`` inside the morphbox block."""
    block = cfg[cfg.index("# >>> morphbox"):cfg.index("# <<< morphbox")]
    out, inside = [], False
    for line in block.splitlines():
        if line.startswith("["):
            inside = line == f"[{name}]"
        elif inside and line and not line.startswith("#"):
            out.append(line)
    return out


def test_boot_config_has_the_right_din_uart_for_each_pi_model(tmp_path):
    """Pi 3/4/Zero 2 W: the PL011 back from Bluetooth + midi-uart0; Pi 5: UART0 on the RP1 +
    its own MIDI overlay. Model filters, so the SD card works in any of them; the block starts
    and ends with [all], so a section of the user's above it cannot swallow it."""
    root = _fake_root(tmp_path)
    (root / "boot/firmware/config.txt").write_text("# stock\n[cm4]\notg_mode=1\n")
    _run("--root", str(root))
    cfg = (root / "boot/firmware/config.txt").read_text()
    block = cfg[cfg.index("# >>> morphbox"):]
    assert block.splitlines()[1] == "[all]" and block.splitlines()[-2] == "[all]"
    for model in ("pi3", "pi4", "pi02"):
        assert _section(cfg, model) == ["dtoverlay=disable-bt", "dtoverlay=midi-uart0"]
    assert _section(cfg, "pi5") == ["dtparam=uart0=on", "dtoverlay=midi-uart0-pi5"]
    assert "enable_uart=1" in _section(cfg, "all")
    assert "[cm4]\notg_mode=1" in cfg  # the user's own section is kept


def test_a_32_bit_system_is_refused_with_a_plain_message(tmp_path):
    root = _fake_root(tmp_path)
    for arch in ("armhf", "armv7l"):
        res = subprocess.run(["bash", str(SETUP), "--root", str(root)], capture_output=True,
                             text=True, timeout=60, env={**os.environ,
                                                         "MORPHBOX_SETUP_ARCH": arch})
        assert res.returncode == 1
        assert "32-bit" in res.stderr and "64-bit Raspberry Pi OS" in res.stderr
        assert "Nothing was changed" in res.stderr and res.stdout == ""
    assert sorted(p.name for p in root.rglob("*")) == ["boot", "config.txt", "firmware"]
    ok = subprocess.run(["bash", str(SETUP), "--dry-run", "--root", str(root)],
                        capture_output=True, text=True, timeout=60,
                        env={**os.environ, "MORPHBOX_SETUP_ARCH": "arm64"})
    assert ok.returncode == 0 and "system: arm64" in ok.stdout


def test_no_systemd_mode_starts_nothing(tmp_path):
    """In a chroot or an image build systemd is not running: every other step runs, no
    systemctl restart/daemon-reload is attempted."""
    res = _run("--dry-run", "--no-systemd")
    out = res.stdout
    assert "systemd: no" in out and "nothing started" in out
    assert "systemctl restart" not in out and "daemon-reload" not in out
    assert "would run: env DEBIAN_FRONTEND=noninteractive apt-get install" in out


def test_the_device_extra_installs_on_current_pi_os():
    """numpy 2 allowed (Python 3.13 has no numpy 1.x wheels); lgpio for gpiozero (the Pi 5);
    no RPi.GPIO sdist; tflite-runtime only as the optional fallback extra."""
    import tomllib
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + meta["optional-dependencies"]["device"]
    numpy = [d for d in deps if d.startswith("numpy")]
    assert numpy and all("<2" not in d for d in numpy)
    assert any(d.startswith("lgpio") and "aarch64" in d for d in deps)
    assert not any(d.lower().startswith("rpi.gpio") for d in deps)
    assert any(d.startswith("tflite-runtime") for d in meta["optional-dependencies"]["tflite"])
