"""docs/cli.md is generated from the click commands; this fails when someone changed a command but not the doc."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, "docs/cli.md is stale: run .venv/bin/python scripts/gen_cli_docs.py\n" + r.stderr
