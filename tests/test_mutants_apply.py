"""Every deliberate bug in the mutation harness still applies: its `old` text occurs exactly once in its
file (a refactor that moves the code makes the mutant stale, and the harness would stop checking it),
and each names tests that exist."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mutants"))

from mutants import MUTANTS  # noqa: E402


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_still_applies(mutant):
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: {mutant.old!r} occurs {text.count(mutant.old)} times"
    assert mutant.old != mutant.new
    for item in mutant.tests:
        if not item.startswith("-k "):
            assert (ROOT / item.split("::")[0]).exists(), item
