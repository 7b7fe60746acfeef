"""Edit fidelity: does a drag land where the user asked? The paper's Table 1 protocol on our faces.

The protocol and its machinery live in testkit/fidelity.py (the tests check them there); this is its
command line. ``python benchmarks/fidelity.py --help`` describes the rows, the checks and the options.

    python benchmarks/fidelity.py --quick                                   # smoke run, ~2 min on 2 CPUs
    python benchmarks/fidelity.py --markdown fidelity.md --json fidelity.json   # the full table
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.fidelity import main  # noqa: E402

if __name__ == "__main__":
    main()
