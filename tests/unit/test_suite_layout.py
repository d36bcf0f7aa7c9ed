"""The test tree itself: ``make test`` collects unit and integration tests in one session."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own() -> None:
    # Without packages, pytest imports each test file by its basename: two files with the
    # same name in tests/unit and tests/integration stop the whole session at collection.
    names = Counter(
        path.name for path in TESTS.rglob("test_*.py") if "__pycache__" not in path.parts
    )
    shared = sorted(name for name, count in names.items() if count > 1)
    assert shared == []
