"""The README stays a short way in: its length, its links to docs/, its module map, its picture."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests.search.conftest import tiny_raw

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_CHARS = 12_000
FIGURE = ROOT / "docs" / "front.png"
MAX_FIGURE_BYTES = 100_000


def readme() -> str:
    return README.read_text(encoding="utf-8")


def layout() -> dict[str, set[str]]:
    """Package -> the module files the README's layout section lists under it."""
    section = readme().split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    package = None
    for line in block.splitlines():
        if re.match(r"^\S+/", line):
            package = line.split("/", 1)[0]
            listed.setdefault(package, set())
        elif package and (m := re.match(r"^\s+(\w+\.py)\b", line)):
            listed[package].add(m.group(1))
    return listed


def test_readme_is_at_most_12000_characters():
    n = len(readme())
    assert n <= MAX_CHARS, f"README.md has {n:,} characters (limit {MAX_CHARS:,}): move reference material to docs/"


def test_every_docs_page_is_linked_from_the_readme():
    text = readme()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert "benchmarks.md" in pages  # the glob looks where the pages are
    unlinked = [p for p in pages if not re.search(rf"\]\(docs/{re.escape(p)}(#[\w-]+)?\)", text)]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


@pytest.mark.parametrize("package", ["space", "search"])
def test_the_layout_lists_every_module_and_no_other(package):
    actual = {p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"}
    listed = layout().get(package, set())
    assert not actual - listed, f"README.md's layout misses {package}/ modules: {sorted(actual - listed)}"
    stale = sorted(listed - actual)
    assert not stale, f"README.md's layout lists {package}/ modules that do not exist: {stale}"


def test_the_readme_picture_is_a_small_png():
    assert "](docs/front.png)" in readme()
    data = FIGURE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "docs/front.png is not a PNG"
    assert len(data) <= MAX_FIGURE_BYTES, f"docs/front.png is {len(data):,} bytes; keep it small (docs/make_figure.py)"


@pytest.mark.slow
def test_make_figure_draws_the_front_of_a_real_study(tmp_path):
    from search.config import experiment_from_dict
    from search.study import run_search

    raw = tiny_raw(tmp_path, search={"n_trials": 4}, tracking={"enabled": False})
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(raw))
    summary = run_search(experiment_from_dict(raw, name="tiny"), quiet=True)

    spec = importlib.util.spec_from_file_location("make_figure", ROOT / "docs" / "make_figure.py")
    make_figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figure)
    out = tmp_path / "front.png"
    drawn = make_figure.render(exp, out)

    assert drawn["front"] == sorted(r.number for r in summary.front)  # the front the study itself reports
    assert drawn["knee"] in drawn["front"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert make_figure.main([str(tmp_path / "tiny.yaml"), "--out", str(out), "--set", "search.study_name=absent"]) == 2
