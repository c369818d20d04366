#!/usr/bin/env bash
# The arm64 check (`make arm64-check`): does morphbox install and run on 64-bit Raspberry Pi
# OS? Builds (once; then reuses) a minimal Debian arm64 bookworm root with debootstrap, runs
# deploy/setup.sh in a fresh copy of it under qemu-user (no systemd), then, as the service
# user, renders the demo MIDI with `morphbox render`, rebuilds a corner grid with the TFLite
# decoder, and runs the sim-profile service (audio process, API) for 20 s.
#
#   sudo deploy/arm64-check.sh [--seconds 20] [--fresh] [--keep] [--base-only]
#
#   --seconds N   how long the service runs (default 20)
#   --fresh       rebuild the cached base root (debootstrap, ~12 min here)
#   --keep        leave the work root mounted-free but in place afterwards (to look around:
#                 sudo chroot .cache/arm64/work bash)
#   --base-only   only build the base root (to prepare a cache)
#
# Needs root (chroot, mounts, binfmt_misc), debootstrap (installed with apt-get if missing)
# and a qemu-aarch64 of version 8 or later: qemu 7.2 (Debian bookworm's) crashes creating an
# ai-edge-litert >= 2.2 interpreter. If the host has none, qemu-user 10 is fetched from
# bookworm-backports into the cache with a private apt state (the host's apt is not touched)
# and registered with binfmt_misc as "morphbox-aarch64" for the run (removed at the end).
# Cache: $MORPHBOX_ARM64_CACHE, default .cache/arm64 in the checkout (git-ignored): base.tar,
# the qemu binary, pip and apt caches (so a second run downloads little).
# Prints each stage with its wall time; exit status 0 only if every stage passed.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MORPHBOX_ARM64_CACHE:-$SRC/.cache/arm64}"
MIRROR="${MORPHBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm RUN_S=20 FRESH=0 KEEP=0 BASE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) RUN_S="$2"; shift ;;
    --fresh) FRESH=1 ;;
    --keep) KEEP=1 ;;
    --base-only) BASE_ONLY=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "arm64-check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "arm64-check: run as root (sudo make arm64-check)" >&2; exit 1; }

T0=$(date +%s)
STAGE_T=$T0
stage() {
  local now; now=$(date +%s)
  echo; echo "=== $* (t = $((now - T0)) s)"
  STAGE_T=$now
}
done_stage() { echo "--- ok in $(( $(date +%s) - STAGE_T )) s"; }
mkdir -p "$CACHE"
WORK="$CACHE/work"
BINFMT=/proc/sys/fs/binfmt_misc
BINFMT_NAME=morphbox-aarch64

unmount_work() {
  local m
  for m in $(grep -o " $WORK[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
}
cleanup() {
  set +e
  unmount_work
  [ -e "$BINFMT/$BINFMT_NAME" ] && echo -1 > "$BINFMT/$BINFMT_NAME"
  if [ "$KEEP" = 0 ] && [ -d "$WORK" ] && ! grep -q " $WORK" /proc/mounts; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---- host tools ---------------------------------------------------------------------------
stage "host: debootstrap, qemu-aarch64 >= 8, binfmt_misc"
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi
qemu_ok() { local v; v="$("$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)"
            [ -n "$v" ] && [ "$v" -ge 8 ]; }
QEMU=""
# a static binary (its libraries are not inside the root): Debian's qemu-user-static, or ours
for q in "$CACHE/qemu/usr/bin/qemu-aarch64" "$(command -v qemu-aarch64-static || true)"; do
  if [ -n "$q" ] && [ -x "$q" ] && qemu_ok "$q"; then QEMU="$q"; break; fi
done
if [ -z "$QEMU" ]; then
  echo "no static qemu-aarch64 >= 8 on this host: fetching qemu-user from bookworm-backports"
  Q="$CACHE/qemu-apt"
  mkdir -p "$Q/lists/partial" "$Q/archives/partial" "$CACHE/qemu"
  echo "deb $MIRROR bookworm-backports main" > "$Q/sources.list"
  APT=(-o "Dir::Etc::SourceList=$Q/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o "Dir::State::Lists=$Q/lists" -o "Dir::Cache::Archives=$Q/archives"
       -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${APT[@]}" update -qq
  (cd "$Q" && rm -f qemu-user_*.deb && apt-get "${APT[@]}" download -qq qemu-user/bookworm-backports)
  dpkg-deb -x "$Q"/qemu-user_*.deb "$CACHE/qemu"
  QEMU="$CACHE/qemu/usr/bin/qemu-aarch64"
  qemu_ok "$QEMU" || { echo "arm64-check: the fetched qemu does not run" >&2; exit 1; }
fi
"$QEMU" --version | head -1
# binfmt_misc: our qemu for aarch64 ELF files, flags O P F (F: the kernel opens the
# interpreter now, so it need not exist inside the root; P: argv[0] preserved, which qemu
# expects when its name ends in -binfmt-P)
mountpoint -q "$BINFMT" || mount -t binfmt_misc binfmt_misc "$BINFMT"
ln -sf "$QEMU" "$CACHE/aarch64-binfmt-P"
[ -e "$BINFMT/$BINFMT_NAME" ] && echo -1 > "$BINFMT/$BINFMT_NAME"
printf '%s' ":$BINFMT_NAME:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:$CACHE/aarch64-binfmt-P:OPF" > "$BINFMT/register"
echo "binfmt_misc: $BINFMT_NAME -> $QEMU"
done_stage

# ---- the base root ------------------------------------------------------------------------
BASE="$CACHE/base-$SUITE.tar"
if [ "$FRESH" = 1 ] || [ ! -s "$BASE" ]; then
  stage "base root: debootstrap --variant=minbase --arch=arm64 $SUITE (first run only)"
  B="$CACHE/base-build"
  rm -rf "$B"
  debootstrap --variant=minbase --arch=arm64 --foreign "$SUITE" "$B" "$MIRROR"
  chroot "$B" /debootstrap/debootstrap --second-stage
  rm -rf "$B/var/cache/apt/archives/"*.deb
  tar -C "$B" -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
  rm -rf "$B"
  done_stage
else
  echo "base root: reusing $BASE ($(du -h "$BASE" | cut -f1)); --fresh rebuilds it"
fi
[ "$BASE_ONLY" = 1 ] && { echo "base root ready"; exit 0; }

# ---- a fresh work root --------------------------------------------------------------------
stage "work root: fresh copy of the base, mounts, the checkout"
unmount_work
rm -rf "$WORK"; mkdir -p "$WORK"
tar -C "$WORK" -xf "$BASE"
mkdir -p "$CACHE/pip" "$CACHE/apt-archives" "$WORK/root/.cache/pip" "$WORK/src/morphbox"
mount -t proc proc "$WORK/proc"
mount -t sysfs sys "$WORK/sys"
mount --rbind /dev "$WORK/dev" && mount --make-rslave "$WORK/dev"
mount --bind "$CACHE/pip" "$WORK/root/.cache/pip"
mount --bind "$CACHE/apt-archives" "$WORK/var/cache/apt/archives"
cp -L /etc/resolv.conf "$WORK/etc/resolv.conf"
# a host behind a TLS-inspecting proxy trusts its CA in /usr/local/share/ca-certificates:
# the root trusts it too (setup.sh's ca-certificates install picks it up), or pip fails
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$WORK/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/usr/local/share/ca-certificates/"
  echo "host CA certificates: $(ls /usr/local/share/ca-certificates/*.crt | wc -l) copied"
fi
# the checkout as it is (tracked and untracked files, not the ignored ones)
(cd "$SRC" && git ls-files -coz --exclude-standard | tar --null -T - --ignore-failed-read -cf -) \
  | tar -C "$WORK/src/morphbox" -xf -
echo "checkout: $(cd "$SRC" && git rev-parse --short HEAD)$(cd "$SRC" && git diff --quiet HEAD || echo ' + local changes')"
in_root() { chroot "$WORK" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
              HOME=/root LANG=C.UTF-8 TERM=dumb "$@"; }
in_root uname -m
done_stage

# ---- setup.sh -----------------------------------------------------------------------------
stage "deploy/setup.sh --no-systemd --profile sim (apt, user, venv + pip, boot config)"
in_root bash /src/morphbox/deploy/setup.sh --no-systemd --profile sim
in_root /opt/morphbox/.venv/bin/pip list 2>/dev/null \
  | grep -i -E '^(numpy|ai-edge-litert|python-rtmidi|pyaudio|lgpio|gpiozero|aiohttp|mido) ' \
  | sed 's/^/    /'
in_root id morphbox
done_stage

# everything below runs as the service user, with its state directory, as the unit does
as_box() { in_root runuser -u morphbox -- env MORPHBOX_STATE_DIR=/var/lib/morphbox \
             OPENBLAS_NUM_THREADS=1 "$@"; }

stage "morphbox render (device-only install, no soundfile) of the demo MIDI"
as_box /opt/morphbox/.venv/bin/morphbox render /opt/morphbox/device/assets/bach_bwv269.mid \
  -o /var/lib/morphbox/demo.wav
as_box /opt/morphbox/.venv/bin/python - <<'EOF'
import wave
with wave.open("/var/lib/morphbox/demo.wav") as w:
    print(f"    demo.wav: {w.getnframes() / w.getframerate():.1f} s, {w.getnchannels()} ch, "
          f"{w.getframerate()} Hz, {8 * w.getsampwidth()}-bit")
EOF
done_stage

stage "corner grid rebuild with the TFLite decoder (ai-edge-litert under qemu)"
as_box /opt/morphbox/.venv/bin/python - <<'EOF'
import time
from morphbox.device.engine.corners import build_grid
from morphbox.device.packs.format import DEFAULT_PACK, load_pack
from morphbox.device.packs.neural import _interpreter_class
pack = load_pack(DEFAULT_PACK)
t = time.perf_counter()
grid = build_grid(pack, {"NW": 3, "NE": 7, "SW": 11, "SE": 15})
print(f"    {_interpreter_class().__module__}: grid {grid.name} decoded in "
      f"{time.perf_counter() - t:.1f} s (emulated)")
EOF
done_stage

stage "the service: morphbox run --profile sim --api --audio-process yes for $RUN_S s"
as_box /opt/morphbox/.venv/bin/morphbox run --profile sim --audio none --audio-process yes \
  --api --bind 127.0.0.1:8750 --seconds "$RUN_S"
done_stage

echo
echo "arm64 check passed in $(( $(date +%s) - T0 )) s (qemu: $("$QEMU" --version | head -1))"
