"""The DragGAN panel's live figures, measured in the REAL GIMP 3 (with its windows, on a virtual display)
against the REAL backend on this machine (loopback, CPU, the built-in faces-128 with its real inversion).

The run and its figures live in testkit/live_panel.py (tests/gimp/test_panel_real_gimp.py makes the
same run); this is its command line. Needs root and the GIMP 3 kit.

    python benchmarks/live_panel.py [--threads 2] [--max-steps 60] [--stop-after 6]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.live_panel import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
