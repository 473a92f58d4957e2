"""The docs show the patches and the include exactly as the repository ships them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_integrate_doc_shows_each_patch_verbatim() -> None:
    doc = (REPO / "docs" / "integrate.md").read_text()
    for patch in sorted((REPO / "patches").glob("*.patch")):
        assert patch.read_text() in doc, f"docs/integrate.md does not show {patch.name} as is"


def test_every_pushgate_setting_is_documented() -> None:
    cfg = (REPO / "pushgate.cfg").read_text()
    doc = (REPO / "docs" / "integrate.md").read_text()
    names = {line.split()[1] for line in cfg.splitlines() if line.startswith("#!trydef ")}
    assert names, "pushgate.cfg has no #!trydef settings"
    assert sorted(n for n in names if f"`{n}`" not in doc) == []


def test_every_edge_setting_is_documented() -> None:
    cfg = (REPO / "edge.cfg").read_text()
    doc = (REPO / "docs" / "edge.md").read_text()
    names = {line.split()[1] for line in cfg.splitlines() if line.startswith("#!trydef ")}
    assert "PUSHGATE_EDGE_UPSTREAM" in names
    assert sorted(n for n in names if f"`{n}`" not in doc) == []


def test_edge_doc_names_the_edge_tests_that_exist() -> None:
    doc = (REPO / "docs" / "edge.md").read_text()
    tests = (REPO / "tests" / "e2e" / "test_edge.py").read_text()
    named = set(re.findall(r"`(test_\w+)`", doc))
    defined = set(re.findall(r"^def (test_\w+)", tests, re.M))
    assert named == defined
