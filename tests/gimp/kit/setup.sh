#!/usr/bin/env bash
# Build, once, the Debian chroot in which the real-GIMP tests run GIMP 3 headless.
#
#   bash tests/gimp/kit/setup.sh [--root DIR]        (as root)
#
# Why a chroot: the tests must drive the GIMP 3 that users run, with GIMP's own Python (python3-gi
# and the Gimp-3.0 typelib) and pyzmq. Debian 12 has no GIMP 3; Debian 13 (trixie) packages 3.0.
# A minbase debootstrap of trixie plus those packages needs no container runtime, only root.
# The X tools (Xvfb, xdotool, xwd, netpbm) are for scripts/gimp_tools/dialog_screenshot.sh,
# which shows the plug-in's dialog on a virtual display; the tests themselves run without X.
# numpy is left out on purpose: a user's GIMP Python may lack it, so the plug-in must not need it.
#
# Idempotent: a finished chroot holds a stamp that lists its packages; when the stamp matches this
# recipe the script exits at once without taking any lock. Otherwise it takes an exclusive flock
# on DIR.lock (run.sh holds a shared one while GIMP runs), so two builders never race and nothing
# is changed under a running GIMP: the second builder waits, then finds the chroot ready. A build
# that was interrupted resumes: debootstrap is redone only if it never finished.
#
# Environment (all optional):
#   DRAGGAN_GIMP3_ROOT       the chroot (default /opt/draggan-gimp3); run.sh reads it too
#   DRAGGAN_GIMP3_MIRROR     Debian mirror (default: the host's apt mirror, else deb.debian.org)
#   DRAGGAN_GIMP3_LOCK_WAIT  seconds to wait for another builder (default 1800)
#   DRAGGAN_GIMP3_LOGS       folder for the build logs (default: a new folder under $TMPDIR)
#
# Exit codes: 0 ready | 1 unexpected | 2 usage | 3 host not suitable (not root, tool missing,
# refusing DIR) | 4 debootstrap or apt failed (network, mirror) | 5 GIMP's smoke test failed |
# 6 timed out waiting for the lock.
set -euo pipefail

ROOT=${DRAGGAN_GIMP3_ROOT:-/opt/draggan-gimp3}
SUITE=trixie
# Bump when the recipe changes in a way the package list does not show: ready chroots redo the
# package and warm-up steps.
RECIPE=1
PACKAGES="gimp gir1.2-gimp-3.0 python3-gi python3-zmq xvfb xauth xdotool x11-apps netpbm"
# Inside the chroot: a GIMP profile in which every bundled plug-in has already been queried. The
# first start in an empty profile spends ~5 s on that; each run copies this one instead.
PROFILE_TEMPLATE=/var/lib/draggan-kit/profile

say() { echo "draggan-gimp3-setup: $*" >&2; }
die() { local rc=$1; shift; say "error: $*"; exit "$rc"; }

while [ $# -gt 0 ]; do
  case $1 in
    --root) [ $# -ge 2 ] || die 2 "--root needs a folder"; ROOT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die 2 "unknown argument '$1' (see --help)" ;;
  esac
done
ROOT=${ROOT%/}
[[ $ROOT == /?*/?* ]] || die 3 "refusing '$ROOT' as the chroot: give an absolute path two levels deep (e.g. /opt/draggan-gimp3)"
[ "$(id -u)" = 0 ] || die 3 "needs root (debootstrap, chroot, mount)"
for tool in flock unshare chroot mount timeout; do
  command -v "$tool" >/dev/null || die 3 "'$tool' is missing (util-linux / coreutils)"
done

STAMP=$ROOT/.draggan-kit-ready
OWNER=$ROOT/.draggan-kit        # "made by this recipe": only such a folder is ever deleted
WANT="recipe=$RECIPE suite=$SUITE packages=$PACKAGES"
ready() { [ -x "$ROOT/usr/bin/gimp-console-3.0" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; }

if ready; then say "ready: $ROOT"; exit 0; fi

mkdir -p "$(dirname "$ROOT")"
exec 8>>"$ROOT.lock"
if ! flock -x -n 8; then
  say "another build or a GIMP run holds $ROOT.lock; waiting"
  flock -x -w "${DRAGGAN_GIMP3_LOCK_WAIT:-1800}" 8 || die 6 "gave up waiting for $ROOT.lock"
fi
if ready; then say "ready: $ROOT (built meanwhile by another setup.sh)"; exit 0; fi

LOGS=${DRAGGAN_GIMP3_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/draggan-gimp3-setup.XXXXXX")}
mkdir -p "$LOGS"
failed() {   # rc log message: show the log's end, where apt and debootstrap say what went wrong
  say "---- end of $2"; tail -n 30 "$2" >&2 || true
  die "$1" "$3 (whole log: $2)"
}

host_mirror() {   # first Debian archive URL in the host's apt sources (deb822 or one-line format)
  local url
  url=$( { grep -hiE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | cut -d: -f2-
           grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
             2>/dev/null | sed -E 's/\[[^]]*\]//'; } | tr ' \t' '\n\n' \
         | grep -E '^https?://.*/debian/?$' | head -n 1 ) || true
  echo "${url:-http://deb.debian.org/debian}"
}
MIRROR=${DRAGGAN_GIMP3_MIRROR:-$(host_mirror)}

# Mounts of a run that was killed before its namespace went away would make rm -rf descend into
# the host's /dev: drop any left under the chroot first (run.sh's mounts live in their own
# namespace, so normally there are none).
drop_mounts() {
  awk -v r="$ROOT/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r \
    | while read -r m; do umount -l "$m" || true; done
}

started=$SECONDS
rm -f "$STAMP"
if [ ! -e "$ROOT/.debootstrap-finished" ]; then
  if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then
    [ -e "$OWNER" ] || die 3 "$ROOT is not empty and was not made by this script; move it or set DRAGGAN_GIMP3_ROOT"
    say "removing the unfinished chroot $ROOT"
    drop_mounts
    rm -rf --one-file-system "$ROOT"
  fi
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap on the host (apt-get)"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap; } \
      >"$LOGS/host-apt.log" 2>&1 || failed 4 "$LOGS/host-apt.log" "could not install debootstrap"
  fi
  mkdir -p "$ROOT"
  touch "$OWNER"
  say "debootstrap $SUITE (minbase) from $MIRROR into $ROOT; log: $LOGS/debootstrap.log"
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 \
    || failed 4 "$LOGS/debootstrap.log" "debootstrap failed (is $MIRROR reachable, does the host's keyring know $SUITE?)"
  touch "$ROOT/.debootstrap-finished"
  say "debootstrap took $((SECONDS - started)) s"
fi

# Documentation and translations are a large share of the size and never read here (runs use
# C.UTF-8); the copyright files stay.
mkdir -p "$ROOT/etc/dpkg/dpkg.cfg.d"
printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
  >"$ROOT/etc/dpkg/dpkg.cfg.d/draggan-kit-slim"
# Package scripts must not start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

# The chroot's apt and GIMP need /proc and /dev. They are mounted in a private mount namespace,
# so they vanish with it even when this script is killed.
in_chroot() {   # command... : run it in the chroot with a clean environment
  unshare --mount --propagation private -- bash -c '
    set -e; R=$1; shift
    mount -t proc proc "$R/proc"; mount --bind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/tmp"
    exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"' _ "$ROOT" "$@"
}

step=$SECONDS
say "apt-get install $PACKAGES; log: $LOGS/apt.log"
# dpkg --configure -a finishes what an interrupted earlier build left half-installed (apt refuses
# to work until that is done); it does nothing otherwise.
{ in_chroot dpkg --configure -a \
    && in_chroot apt-get update \
    && in_chroot apt-get install -y --no-install-recommends $PACKAGES \
    && in_chroot apt-get clean; } >"$LOGS/apt.log" 2>&1 \
  || failed 4 "$LOGS/apt.log" "installing the packages in $ROOT failed"
rm -rf "$ROOT"/var/lib/apt/lists/*
say "packages took $((SECONDS - step)) s"

# Warm the profile template and prove the parts the tests rely on: GIMP starts headless, runs a
# Python batch, and that Python has pyzmq and the Gimp typelib; the X tools are on PATH.
step=$SECONDS
rm -rf "${ROOT:?}$PROFILE_TEMPLATE"
mkdir -p "$ROOT$PROFILE_TEMPLATE"
in_chroot /bin/sh -c '
  for tool in Xvfb xdotool xwd xwdtopnm pnmtopng; do command -v $tool >/dev/null || echo "missing tool: $tool"; done
  HOME=/tmp GIMP3_DIRECTORY=$1 timeout -k 10 300 gimp-console-3.0 --no-interface --batch-interpreter python-fu-eval \
    -b "import zmq; print(\"draggan-kit-smoke\", Gimp.version(), \"pyzmq\", zmq.__version__)" --quit
' _ "$PROFILE_TEMPLATE" >"$LOGS/smoke.log" 2>&1 || true
if ! grep -q '^draggan-kit-smoke' "$LOGS/smoke.log" || grep -q '^missing tool' "$LOGS/smoke.log"; then
  failed 5 "$LOGS/smoke.log" "the smoke test in $ROOT failed"
fi
say "warm-up and smoke test took $((SECONDS - step)) s: $(grep '^draggan-kit-smoke' "$LOGS/smoke.log" | cut -d' ' -f2-)"

echo "$WANT" >"$STAMP.new" && mv "$STAMP.new" "$STAMP"
say "ready: $ROOT, $(du -sh --one-file-system "$ROOT" | cut -f1), built in $((SECONDS - started)) s"
