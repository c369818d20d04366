#!/usr/bin/env bash
# morphbox: set up a Raspberry Pi OS 64-bit box (Bookworm / Python 3.11 or Trixie / Python
# 3.13; Pi 3, 4, 5, Zero 2 W). Idempotent: run it again after a `git pull` and it only changes
# what differs. 32-bit Raspberry Pi OS is refused (the neural runtime has no 32-bit build).
#
#   sudo deploy/setup.sh [--dry-run] [--root DIR] [--no-systemd] [--profile trill|nsynth-super|sim]
#                        [--hat OVERLAY] [--i2c-hz HZ] [--bind HOST:PORT] [--user NAME]
#
#   --dry-run      print every step and change nothing
#   --root DIR     write files under DIR instead of / and skip commands that act on the
#                  running system (apt-get, useradd, pip, systemctl, raspi-config): for
#                  preparing an image or testing
#   --no-systemd   run every step (packages, user, venv, files) but start nothing: for a
#                  chroot, a container or an image build, where systemd is not running
#                  (chosen by itself when /run/systemd/system is missing); units are enabled
#                  offline if systemctl exists
#   --profile      hardware profile written to /etc/default/morphbox (default trill)
#   --hat          audio HAT device-tree overlay (default hifiberry-dac; e.g. iqaudio-dacplus)
#   --i2c-hz       I2C clock (default 400000; the nsynth-super board ran at 640000)
#   --bind         HTTP API address (default 127.0.0.1:8750; 0.0.0.0:8750 for the LAN)
#
# Each step prints "[n/N] what" and then "ok", "changed" or "would ..." (dry run).
# MORPHBOX_SETUP_ARCH overrides the detected Debian architecture (tests, image builds).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0 ROOT="" PROFILE=trill HAT=hifiberry-dac I2C_HZ=400000 BIND=127.0.0.1:8750 SYSTEMD=auto
SVC_USER=morphbox APP=/opt/morphbox STATE=/var/lib/morphbox
# What the Python packages need that pip cannot bring: a compiler and headers for the sdists
# (pyaudio: portaudio19-dev; python-rtmidi on Python 3.13: libasound2-dev, libjack-jackd2-dev,
# pkg-config; lgpio on Python 3.13: swig, liblgpio-dev where the archive has it), the venv.
APT_PKGS="python3 python3-venv python3-dev build-essential pkg-config portaudio19-dev \
libasound2-dev libjack-jackd2-dev swig i2c-tools libopenblas0 libopenjp2-7 rsync ca-certificates"
APT_OPTIONAL="liblgpio-dev"

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --root) ROOT="${2%/}"; shift ;;
    --no-systemd) SYSTEMD=no ;;
    --profile) PROFILE="$2"; shift ;;
    --hat) HAT="$2"; shift ;;
    --i2c-hz) I2C_HZ="$2"; shift ;;
    --bind) BIND="$2"; shift ;;
    --user) SVC_USER="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$PROFILE" in trill|nsynth-super|sim) ;; *)
  echo "setup.sh: unknown profile '$PROFILE' (trill, nsynth-super, sim)" >&2; exit 2 ;; esac
[[ "$I2C_HZ" =~ ^[0-9]+$ ]] || { echo "setup.sh: --i2c-hz takes a number" >&2; exit 2; }

# 64-bit only: ai-edge-litert (the TFLite runtime) has no armhf/armv7l wheel and no sdist.
ARCH="${MORPHBOX_SETUP_ARCH:-$(dpkg --print-architecture 2>/dev/null || uname -m)}"
case "$ARCH" in
  armhf|armel|armv6l|armv7l|arm|i386|i686)
    cat >&2 <<EOF
setup.sh: this is a 32-bit system ($ARCH). morphbox needs 64-bit Raspberry Pi OS (arm64):
its neural runtime (ai-edge-litert) has no 32-bit build. Write "Raspberry Pi OS (64-bit)"
to the SD card with Raspberry Pi Imager (Pi 3, 4, 5 and Zero 2 W all run it) and run this
script again. Nothing was changed.
EOF
    exit 1 ;;
esac

if [ "$DRY" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (sudo), or use --dry-run / --root DIR" >&2; exit 1
fi
if [ "$SYSTEMD" = auto ]; then
  if [ -n "$ROOT" ] || [ "$DRY" = 1 ] || [ -d /run/systemd/system ]; then SYSTEMD=yes
  else SYSTEMD=no; fi
fi

STEP=0 TOTAL=12
step() { STEP=$((STEP + 1)); echo "[$STEP/$TOTAL] $*"; }
# run CMD...: a command acting on the live system
run() {
  if [ "$DRY" = 1 ]; then echo "    would run: $*"
  elif [ -n "$ROOT" ]; then echo "    skipped (--root): $*"
  else echo "    run: $*"; "$@"; fi
}
# put_file DEST MODE < content: write DEST (under ROOT) if its content differs
put_file() {
  local dest="$ROOT$1" mode="$2" tmp
  tmp="$(mktemp)"; cat > "$tmp"
  if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then echo "    ok: $1 up to date"; rm -f "$tmp"
  elif [ "$DRY" = 1 ]; then echo "    would write: $1"; sed 's/^/      | /' "$tmp"; rm -f "$tmp"
  else mkdir -p "$(dirname "$dest")"; install -m "$mode" "$tmp" "$dest"; rm -f "$tmp"
       echo "    changed: wrote $1"; fi
}
# make_dir DIR MODE
make_dir() {
  if [ -d "$ROOT$1" ]; then echo "    ok: $1 exists"
  elif [ "$DRY" = 1 ]; then echo "    would create: $1 (mode $2)"
  else mkdir -p "$ROOT$1"; chmod "$2" "$ROOT$1"; echo "    changed: created $1"; fi
}
subst() { sed -e "s|@I2C_HZ@|$I2C_HZ|" -e "s|@HAT@|$HAT|" -e "s|@PROFILE@|$PROFILE|" \
              -e "s|@BIND@|$BIND|" "$1"; }

# The board, for the log (the boot config itself covers every model with [piN] filters).
MODEL="$( { tr -d '\0' < "$ROOT/proc/device-tree/model"; } 2>/dev/null || true)"
echo "system: $ARCH, ${MODEL:-not a Raspberry Pi (or unknown model)}, systemd: $SYSTEMD"

step "apt packages: $APT_PKGS (+ $APT_OPTIONAL where the archive has it)"
run apt-get update -qq
if [ "$DRY" = 0 ] && [ -z "$ROOT" ]; then
  for p in $APT_OPTIONAL; do
    if apt-cache show "$p" >/dev/null 2>&1; then APT_PKGS="$APT_PKGS $p"
    else echo "    note: $p is not in this archive (only Python 3.13 builds lgpio from source)"; fi
  done
fi
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PKGS

step "service user $SVC_USER in groups audio, i2c, gpio, dialout (the UART for DIN MIDI)"
if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && id "$SVC_USER" >/dev/null 2>&1; then
  echo "    ok: user $SVC_USER exists"
else
  run useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin "$SVC_USER"
fi
for g in audio i2c gpio dialout; do
  run sh -c "getent group $g >/dev/null || groupadd --system $g"
done
run usermod -aG audio,i2c,gpio,dialout "$SVC_USER"

step "application in $APP (from $SRC)"
run rsync -a --delete --exclude .venv --exclude .git --exclude out --exclude .make \
  --exclude .cache "$SRC/" "$APP/"

step "virtual environment $APP/.venv with morphbox[device]"
run sh -c "[ -x $APP/.venv/bin/python ] || python3 -m venv $APP/.venv"
run "$APP/.venv/bin/pip" install -q --upgrade pip
run "$APP/.venv/bin/pip" install -q "$APP[device]"

step "boot config: I2C at $I2C_HZ Hz, DIN MIDI UART per model (Pi 3/4/Zero 2 W, Pi 5), audio HAT ($HAT)"
BOOT=/boot/firmware/config.txt
if [ ! -e "$ROOT$BOOT" ] && [ -e "$ROOT/boot/config.txt" ]; then BOOT=/boot/config.txt; fi
BLOCK="$(printf '# >>> morphbox (deploy/setup.sh; edits inside are replaced)\n%s\n# <<< morphbox' \
  "$(subst "$SRC/deploy/config/config.txt.fragment")")"
CURRENT="$(cat "$ROOT$BOOT" 2>/dev/null || true)"
OTHER="$(printf '%s\n' "$CURRENT" | sed '/^# >>> morphbox/,/^# <<< morphbox/d')"
# lines of ours that also appear outside the block would fight it: comment them out
for key in dtparam=i2c_arm= dtparam=i2c_arm_baudrate= enable_uart= dtparam=audio=; do
  OTHER="$(printf '%s\n' "$OTHER" | sed "s|^$key|#&|")"
done
if [ -n "$OTHER" ]; then NEW="$OTHER"$'\n\n'"$BLOCK"; else NEW="$BLOCK"; fi
printf '%s\n' "$NEW" | put_file "$BOOT" 0644

step "kernel modules: i2c-dev"
subst "$SRC/deploy/config/modules-load.conf" | put_file /etc/modules-load.d/morphbox.conf 0644

step "serial console off the UART (it carries MIDI); Bluetooth off the UART (Pi 3/4/Zero 2 W)"
if { [ -z "$ROOT" ] && command -v raspi-config >/dev/null 2>&1; } || [ "$DRY" = 1 ]; then
  run raspi-config nonint do_serial_cons 1
  run raspi-config nonint do_serial_hw 0
else
  echo "    skipped: no raspi-config here"
fi
# with dtoverlay=disable-bt the Bluetooth modem has no UART: its attach service must not try
if [ "$DRY" = 1 ] || { [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 &&
     systemctl list-unit-files hciuart.service 2>/dev/null | grep -q hciuart; }; then
  run systemctl disable hciuart.service
fi

step "state directory $STATE (packs, keys, token, recordings)"
make_dir "$STATE" 0750
run chown "$SVC_USER:$SVC_USER" "$STATE"

step "compiled engine kernels into $STATE/numba-cache (numba; takes minutes on a Pi, once)"
# the service and its audio process then load them from this cache instead of compiling
run runuser -u "$SVC_USER" -- env MORPHBOX_STATE_DIR="$STATE" \
  "$APP/.venv/bin/python" -m morphbox.device.engine.compiled --state-dir "$STATE"

step "settings /etc/default/morphbox (kept if present)"
if [ -f "$ROOT/etc/default/morphbox" ]; then echo "    ok: kept /etc/default/morphbox"
else subst "$SRC/deploy/config/default.env" | put_file /etc/default/morphbox 0644; fi

step "systemd units: morphbox.service, morphbox-cpu-performance.service"
put_file /etc/systemd/system/morphbox.service 0644 < "$SRC/deploy/morphbox.service"
put_file /etc/systemd/system/morphbox-cpu-performance.service 0644 \
  < "$SRC/deploy/morphbox-cpu-performance.service"
if [ "$SYSTEMD" = yes ]; then
  run systemctl daemon-reload
  run systemctl enable morphbox-cpu-performance.service morphbox.service
  run systemctl restart morphbox.service
else
  echo "    systemd is not running (chroot, container, image): nothing started"
  if command -v systemctl >/dev/null 2>&1; then  # enabling works offline
    run systemctl enable morphbox-cpu-performance.service morphbox.service
  fi
fi

step "check: the installed morphbox imports (engine, audio process, TFLite runtime)"
run "$APP/.venv/bin/python" -c "import morphbox.device.engine.process as p, morphbox.device.packs.neural as n; print('    ok: TFLite runtime', n._interpreter_class().__module__)"

echo "done. Reboot once for the boot config; pairing token: sudo cat $STATE/token"
