#!/usr/bin/env bash
# morphbox: set up a Raspberry Pi OS (Bookworm or Bullseye) box. Idempotent: run it again
# after a `git pull` and it only changes what differs.
#
#   sudo deploy/setup.sh [--dry-run] [--root DIR] [--profile trill|nsynth-super|sim]
#                        [--hat OVERLAY] [--i2c-hz HZ] [--bind HOST:PORT] [--user NAME]
#
#   --dry-run      print every step and change nothing
#   --root DIR     write files under DIR instead of / and skip commands that act on the
#                  running system (apt-get, useradd, pip, systemctl, raspi-config): for
#                  preparing an image or testing
#   --profile      hardware profile written to /etc/default/morphbox (default trill)
#   --hat          audio HAT device-tree overlay (default hifiberry-dac; e.g. iqaudio-dacplus)
#   --i2c-hz       I2C clock (default 400000; the nsynth-super board ran at 640000)
#   --bind         HTTP API address (default 127.0.0.1:8750; 0.0.0.0:8750 for the LAN)
#
# Each step prints "[n/N] what" and then "ok", "changed" or "would ..." (dry run).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0 ROOT="" PROFILE=trill HAT=hifiberry-dac I2C_HZ=400000 BIND=127.0.0.1:8750
SVC_USER=morphbox APP=/opt/morphbox STATE=/var/lib/morphbox
APT_PKGS="python3-venv python3-dev portaudio19-dev libasound2-dev libjack-jackd2-dev \
i2c-tools libopenblas0 libopenjp2-7 rsync"

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --root) ROOT="${2%/}"; shift ;;
    --profile) PROFILE="$2"; shift ;;
    --hat) HAT="$2"; shift ;;
    --i2c-hz) I2C_HZ="$2"; shift ;;
    --bind) BIND="$2"; shift ;;
    --user) SVC_USER="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$PROFILE" in trill|nsynth-super|sim) ;; *)
  echo "setup.sh: unknown profile '$PROFILE' (trill, nsynth-super, sim)" >&2; exit 2 ;; esac
[[ "$I2C_HZ" =~ ^[0-9]+$ ]] || { echo "setup.sh: --i2c-hz takes a number" >&2; exit 2; }

if [ "$DRY" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (sudo), or use --dry-run / --root DIR" >&2; exit 1
fi

STEP=0 TOTAL=10
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

step "apt packages: $APT_PKGS"
run apt-get update -qq
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PKGS

step "service user $SVC_USER in groups audio, i2c, gpio"
if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && id "$SVC_USER" >/dev/null 2>&1; then
  echo "    ok: user $SVC_USER exists"
else
  run useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin "$SVC_USER"
fi
for g in audio i2c gpio; do
  run sh -c "getent group $g >/dev/null || groupadd --system $g"
done
run usermod -aG audio,i2c,gpio "$SVC_USER"

step "application in $APP (from $SRC)"
run rsync -a --delete --exclude .venv --exclude .git --exclude out --exclude .make \
  "$SRC/" "$APP/"

step "virtual environment $APP/.venv with morphbox[device]"
run sh -c "[ -x $APP/.venv/bin/python ] || python3 -m venv $APP/.venv"
run "$APP/.venv/bin/pip" install -q --upgrade pip
run "$APP/.venv/bin/pip" install -q "$APP[device]"

step "boot config: I2C at $I2C_HZ Hz, UART MIDI (midi-uart0), audio HAT ($HAT)"
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

step "serial console off the UART (it carries MIDI)"
if [ -z "$ROOT" ] && command -v raspi-config >/dev/null 2>&1 || [ "$DRY" = 1 ]; then
  run raspi-config nonint do_serial_cons 1
  run raspi-config nonint do_serial_hw 0
else
  echo "    skipped: no raspi-config here"
fi

step "state directory $STATE (packs, keys, token, recordings)"
make_dir "$STATE" 0750
run chown "$SVC_USER:$SVC_USER" "$STATE"

step "settings /etc/default/morphbox (kept if present)"
if [ -f "$ROOT/etc/default/morphbox" ]; then echo "    ok: kept /etc/default/morphbox"
else subst "$SRC/deploy/config/default.env" | put_file /etc/default/morphbox 0644; fi

step "systemd units: morphbox.service, morphbox-cpu-performance.service"
put_file /etc/systemd/system/morphbox.service 0644 < "$SRC/deploy/morphbox.service"
put_file /etc/systemd/system/morphbox-cpu-performance.service 0644 \
  < "$SRC/deploy/morphbox-cpu-performance.service"
run systemctl daemon-reload
run systemctl enable morphbox-cpu-performance.service morphbox.service
run systemctl restart morphbox.service

echo "done. Reboot once for the boot config; pairing token: sudo cat $STATE/token"
