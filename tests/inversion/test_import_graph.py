"""inversion/ has no import circle: pti needs the settings and the objective, never project."""

import subprocess
import sys
from pathlib import Path

INVERSION = Path(__file__).resolve().parents[2] / "inversion"


def test_pti_does_not_import_project_and_project_uses_the_same_objects():
    for name in ("pti.py", "settings.py"):
        assert "from .project" not in (INVERSION / name).read_text()
    code = (
        # sys.modules, not attribute access: the package's ``project`` attribute is the function.
        "import sys, inversion\n"
        "s, p, pr = (sys.modules['inversion.' + m] for m in ('settings', 'pti', 'project'))\n"
        "assert p.ProjectionSettings is s.ProjectionSettings\n"
        "assert pr.pivotal_tuning is p.pivotal_tuning and pr.PRESETS is s.PRESETS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=INVERSION.parent)
