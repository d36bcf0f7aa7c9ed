"""The shape of the code: modules small enough to read, test modules one session can collect."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "operator" / "tandem_operator"
MAX_LINES = 600


def test_every_test_module_has_a_name_of_its_own() -> None:
    # Without packages, pytest imports each test file by its basename: two files with the
    # same name in tests/unit and tests/integration stop the whole session at collection.
    names = Counter(
        path.name for path in TESTS.rglob("test_*.py") if "__pycache__" not in path.parts
    )
    shared = sorted(name for name, count in names.items() if count > 1)
    assert shared == []


def test_modules_outside_the_local_control_plane_stay_under_600_lines() -> None:
    # devcluster/ drives processes (etcd, kube-apiserver, kwok) step by step and is exempt.
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if "devcluster" not in path.parts
        and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
