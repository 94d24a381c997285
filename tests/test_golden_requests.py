"""The agents' requests for every bundled task match the reviewed golden files (tests/golden/):
a prompt change shows up as a diff of those files. Regenerate: ``python -m tests.golden.regen``."""
from __future__ import annotations

import pytest

from tests.golden.regen import TEST_CANARY, golden_files


@pytest.fixture(scope="module")
def files():
    return golden_files()


def test_golden_request_files_match_the_code(files):
    stale = [p.name for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    assert not stale, (f"the agents' requests changed for {stale}: review the change, then regenerate with "
                       f"`python -m tests.golden.regen` and commit tests/golden/")


def test_golden_requests_cover_every_task_and_hold_no_test_score(files):
    from sia.tasks import available_tasks

    names = {p.name for p in files}
    assert names == {f"{t}_{r}.txt" for t in available_tasks() for r in ("meta", "feedback")}
    for path, text in files.items():
        assert str(TEST_CANARY) not in text and "incumbent_test" not in text, path.name
