"""docs/where-to-change-what.md follows one config key down to Postfix: each place its
table names (a file, and what the file holds there) still exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "where-to-change-what.md"


def places() -> list[tuple[str, str]]:
    """(file, text) of each table row: the file in backquotes, the text in backquotes."""
    rows = []
    path = ""
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        path = cells[1].strip("`") or path
        m = re.match(r"(`+) ?(.+?) ?\1", cells[2])
        assert m, line
        rows.append((path, m.group(2)))
    return rows


def test_the_page_names_places_from_the_stack_file_to_main_cf() -> None:
    files = [f for f, _ in places()]
    assert files[0] == "pure/config.py" and "pure/postfix.py" in files
    assert len(places()) >= 10


@pytest.mark.parametrize(("path", "text"), places())
def test_each_named_place_holds_what_the_page_says(path: str, text: str) -> None:
    target = REPO / path
    assert target.is_file(), f"{path} is gone: update docs/where-to-change-what.md"
    assert text in target.read_text(), f"{path} no longer holds {text!r}: update the page"
