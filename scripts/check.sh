#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy on the backend packages), tests (pytest).
# Uses the project venv made by install.py when there is one, else the python3 on PATH ($PYTHON
# overrides), and installs the test extras into it when they are missing.
# The real-GIMP tests (tests/gimp, tests/install/test_install_gimp.py) build a GIMP 3 chroot with
# tests/gimp/kit/setup.sh when it is missing: as root, about 740 MB under /opt/draggan-gimp3, packages
# from the Debian archive (1-2 min once, then reused); without root they are skipped (CI=true: failed).
# Extra arguments go to pytest. pytest's summary line (the last line) gives the counts.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import pytest, ruff, mypy, torch, zmq, skimage" 2>/dev/null; then
  echo "check.sh: installing the test extras into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0" || exit 1
  "$PY" -m pip install -q -e ".[test]" || exit 1
fi
# The face-landmark tests compare our MTCNN with the weights shipped in facenet-pytorch's wheel,
# which pins an old torch: it is installed without its dependencies and never imported.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('facenet_pytorch') is None)" 2>/dev/null; then
  echo "check.sh: installing facenet-pytorch's MTCNN weights (--no-deps)" >&2
  "$PY" -m pip install -q --no-deps "facenet-pytorch==2.6.0" || exit 1
fi
# The studio test (tests/studio) runs the real HAProxy from Debian in front of two replicas.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check.sh: installing haproxy (apt-get, Debian archive)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends haproxy >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends haproxy >/dev/null 2>&1; } \
      || echo "check.sh: could not install haproxy: tests/studio will be skipped (failed under CI=true)" >&2
    # where an init system started the packaged service, stop it: the tests run their own haproxy
    service haproxy stop >/dev/null 2>&1 || true
  else
    echo "check.sh: haproxy is missing and cannot be installed here (needs root and apt-get)" >&2
  fi
fi
status=0
echo "== ruff"; "$PY" -m ruff check . || status=1
echo "== mypy"; "$PY" -m mypy || status=1
echo "== pytest"
"$PY" -m pytest "$@"
rc=$?
# pytest exits 5 when it collected nothing: that is a failure of the suite, not a pass.
if [ $rc -eq 5 ]; then echo "check.sh: pytest collected no tests" >&2; rc=1; fi
[ $rc -eq 0 ] || status=1
exit $status
