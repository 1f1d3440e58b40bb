"""The editing core takes paths and settings as arguments: configuration owns the environment.

import-linter (`lint-imports`, docs/architecture.md) checks what the core imports; this
checks what no import contract can see: a read of the environment.
"""

from __future__ import annotations

import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "app" / "editing"


def test_the_editing_core_reads_no_environment_variable():
    reads = re.compile(r"os\.environ|getenv\(|environ\[")
    offenders = [
        f"{p.name}:{i}"
        for p in sorted(CORE.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if reads.search(line)
    ]
    assert offenders == [], f"environment read in the editing core (move it to app/config.py): {offenders}"
