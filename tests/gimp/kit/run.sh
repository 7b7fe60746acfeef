#!/usr/bin/env bash
# Run Python in the real GIMP 3, headless, inside the chroot that setup.sh built (as root).
#
#   bash tests/gimp/kit/run.sh [options] --batch CODE
#   bash tests/gimp/kit/run.sh [options] --batch-file FILE
#
#   --plugins DIR           a host folder of plug-ins (DIR/NAME/NAME.py, executable), bound
#                           read-only and put on GIMP's plug-in path; repeatable
#   --bind HOST:INSIDE[:ro] bind a host file or folder at INSIDE (absolute) in the chroot; repeatable
#   --env NAME=VALUE        environment for GIMP, its plug-ins and the batch code; repeatable
#   --timeout SEC           stop GIMP and everything it started after SEC seconds (default 300)
#   --batch CODE            code for GIMP's python-fu-eval (Gimp, Gegl, Gio, GLib, GObject imported)
#   --batch-file FILE       a host Python file, run as __main__ with its folder (bound read-only)
#                           first on sys.path, so it can import its siblings
#   --raw                   keep the stderr lines GIMP prints on every healthy run (see NOISE)
#   --root DIR              the chroot (default $DRAGGAN_GIMP3_ROOT, else /opt/draggan-gimp3)
#
# Each run is sealed: its own mount and PID namespaces, a fresh copy of the warmed GIMP profile,
# a private /tmp and /mnt. When GIMP ends, or the run is killed, every mount and every process
# it started (plug-ins, Xvfb) is gone, so runs cannot leak into each other or into the host.
# The network is the host's: plug-ins reach a backend listening on the host's 127.0.0.1.
# GIMP is always started with --quit (else gimp-console stays up after the batch) under timeout.
#
# Exit codes: GIMP's own (0 ok, 64 the batch code raised: its traceback is on stderr) | 124 or 137
# timed out | 2 usage | 3 not root, or the chroot is not ready (run setup.sh) | 6 timed out
# waiting for setup.sh, which holds the chroot's lock while it builds.
set -euo pipefail

ROOT=${DRAGGAN_GIMP3_ROOT:-/opt/draggan-gimp3}
TIMEOUT=300 CODE="" FILE="" RAW=0
PLUGIN_DIRS=() BINDS=() ENVS=()
# Lines GIMP 3.0 prints on healthy runs: script-fu finding no display, the wire closing as
# plug-ins exit, the welcome banner, python-fu-eval's success line, and an exit-time leak report
# about GIMP's own contexts that comes and goes with no plug-in at all. GIMP-Error lines are
# kept: they carry the message of any procedure that did not succeed, expected or not.
NOISE='cannot open display|gimp_wire_read\(\): unexpected EOF|gimp_flush\(\): error: Broken pipe|Welcome to GIMP|^batch command executed successfully$|list of contexts not empty upon exit|^stale context: |^$'

say() { echo "draggan-gimp3-run: $*" >&2; }
die() { local rc=$1; shift; say "error: $*"; exit "$rc"; }

while [ $# -gt 0 ]; do
  opt=$1
  case $opt in
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --raw) RAW=1; shift; continue ;;
    --plugins|--bind|--env|--timeout|--batch|--batch-file|--root)
      [ $# -ge 2 ] || die 2 "$opt needs a value" ;;
    *) die 2 "unknown argument '$opt' (see --help)" ;;
  esac
  value=$2
  shift 2
  case $opt in
    --plugins) PLUGIN_DIRS+=("$value") ;;
    --bind) BINDS+=("$value") ;;
    --env) [[ $value =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die 2 "--env wants NAME=VALUE, not '$value'"
           ENVS+=("$value") ;;
    --timeout) [[ $value =~ ^[1-9][0-9]*$ ]] || die 2 "--timeout wants whole seconds, not '$value'"
               TIMEOUT=$value ;;
    --batch) CODE=$value ;;
    --batch-file) FILE=$value ;;
    --root) ROOT=$value ;;
  esac
done
[ -n "$CODE$FILE" ] || die 2 "give --batch CODE or --batch-file FILE (see --help)"
[ -z "$CODE" ] || [ -z "$FILE" ] || die 2 "give --batch or --batch-file, not both"
[ "$(id -u)" = 0 ] || die 3 "needs root (unshare, mount, chroot)"
ROOT=${ROOT%/}

# Binds as triples "host path" "path inside" "ro|rw", handed to the namespace below.
MOUNTS=()
add_mount() {
  [ -e "$1" ] || die 2 "bind source '$1' does not exist"
  [[ $2 == /?* ]] || die 2 "bind target '$2' is not an absolute path"
  MOUNTS+=("$(realpath "$1")" "${2%/}" "$3")
}
for b in "${BINDS[@]}"; do
  mode=rw
  if [[ $b == *:ro ]]; then mode=ro; b=${b%:ro}; fi
  [[ $b == ?*:/* ]] || die 2 "--bind wants HOST:INSIDE[:ro], not '$b'"
  add_mount "${b%%:*}" "${b#*:}" "$mode"
done

# GIMP skips a plug-in without a word when its file is not executable or not named like its
# folder: say so here, where it costs nothing.
PLUGIN_PATH='${gimp_dir}/plug-ins:${gimp_plug_in_dir}/plug-ins'
n=0
for d in "${PLUGIN_DIRS[@]}"; do
  [ -d "$d" ] || die 2 "--plugins '$d' is not a folder"
  [ ! -f "$d/$(basename "$d").py" ] || say "warning: $d looks like one plug-in; --plugins wants the folder above it"
  for sub in "$d"/*/; do
    main=$sub$(basename "$sub").py
    if [ -f "$main" ] && [ ! -x "$main" ]; then
      say "warning: $main is not executable: GIMP will skip it"
    elif [ ! -e "$main" ] && compgen -G "$sub*.py" >/dev/null; then
      say "warning: $sub has Python files but no $(basename "$sub").py, the one GIMP would start"
    fi
  done
  n=$((n + 1))
  add_mount "$d" "/mnt/draggan-kit/plug-ins-$n" ro
  PLUGIN_PATH+=":/mnt/draggan-kit/plug-ins-$n"
done

if [ -n "$FILE" ]; then
  [ -f "$FILE" ] || die 2 "--batch-file '$FILE' is not a file"
  add_mount "$(dirname "$FILE")" /mnt/draggan-kit/batch ro
  ENVS+=("DRAGGAN_KIT_BATCH_FILE=/mnt/draggan-kit/batch/$(basename "$FILE")")
  CODE='import os, runpy, sys
path = os.environ["DRAGGAN_KIT_BATCH_FILE"]
sys.path.insert(0, os.path.dirname(path))
runpy.run_path(path, run_name="__main__")'
fi

# A shared lock for the whole run: setup.sh takes it exclusively, so it never changes the chroot
# under a running GIMP, and a run started during a build waits for the build to finish.
[ -d "$ROOT" ] || die 3 "no chroot at $ROOT: run 'bash $(dirname "$0")/setup.sh' first"
exec 8>>"$ROOT.lock"
if ! flock -s -n 8; then
  say "setup.sh is building $ROOT; waiting"
  flock -s -w "${DRAGGAN_GIMP3_LOCK_WAIT:-1800}" 8 || die 6 "gave up waiting for $ROOT.lock"
fi
[ -f "$ROOT/.draggan-kit-ready" ] || die 3 "$ROOT is not a finished chroot: run 'bash $(dirname "$0")/setup.sh'"

if [ "$RAW" = 0 ]; then
  exec 2> >(grep --line-buffered -v -E "$NOISE" >&2)
fi

# exec: killing this script (even with SIGKILL) kills unshare, and --kill-child then takes down
# the namespace's first process and with it every process in the namespace.
exec unshare --mount --pid --fork --kill-child --propagation private -- bash -c '
  set -euo pipefail
  R=$1 TIMEOUT=$2 PLUGIN_PATH=$3 CODE=$4; shift 4
  mount -t proc proc "$R/proc"
  mount --bind /dev "$R/dev"
  for d in /dev/shm /tmp /mnt; do mount -t tmpfs -o mode=1777 tmpfs "$R$d"; done
  while [ "$1" != -- ]; do            # mount triples up to "--", then NAME=VALUE pairs
    src=$1 dst=$R$2 mode=$3; shift 3
    if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; : >>"$dst"; fi
    mount --bind "$src" "$dst"
    [ "$mode" = rw ] || mount -o remount,bind,ro "$dst"
  done
  shift
  cp -a "$R/var/lib/draggan-kit/profile" "$R/tmp/gimp-profile"
  printf "(plug-in-path \"%s\")\n" "$PLUGIN_PATH" >>"$R/tmp/gimp-profile/gimprc"
  rc=0
  timeout -k 10 "$TIMEOUT" chroot "$R" /usr/bin/env -i HOME=/tmp LANG=C.UTF-8 \
      PATH=/usr/local/bin:/usr/bin:/bin GIMP3_DIRECTORY=/tmp/gimp-profile \
      PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 "$@" \
    gimp-console-3.0 --no-interface --no-splash --console-messages --stack-trace-mode=never \
      --batch-interpreter python-fu-eval -b "$CODE" --quit || rc=$?
  case $rc in
    0) ;;
    124|137) echo "draggan-gimp3-run: error: GIMP stopped after the ${TIMEOUT} s timeout" >&2 ;;
    64) echo "draggan-gimp3-run: error: the batch code raised (GIMP exit 64; traceback above)" >&2 ;;
    *) echo "draggan-gimp3-run: error: GIMP exit $rc" >&2 ;;
  esac
  exit $rc
' _ "$ROOT" "$TIMEOUT" "$PLUGIN_PATH" "$CODE" "${MOUNTS[@]}" -- "${ENVS[@]}"
