"""docs/experiment-file.md is generated from the config dataclasses and matches them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from search import docs
from search.checks import check_choice, check_float, check_int
from search.config import SECTIONS, TOP_KEYS
from space import SearchSpace

ROOT = Path(__file__).resolve().parents[2]


def test_the_page_is_what_the_code_generates():
    written = (ROOT / "docs" / "experiment-file.md").read_text(encoding="utf-8")
    assert written == docs.page(), ("docs/experiment-file.md differs from the config dataclasses in search/config.py "
                                    f"and space/searchspace.py; regenerate it: {docs.COMMAND}")


def test_every_key_has_its_unit_and_every_key_in_use_is_on_the_page():
    page = docs.page()
    for section, cls in [*SECTIONS.items(), ("space", SearchSpace)]:
        comments = docs.field_comments(cls)
        for f in dataclasses.fields(cls):
            assert comments.get(f.name), f"{section}.{f.name} has no inline comment (its unit and meaning)"
            assert f"| `{f.name}` |" in page.split(f"## `{section}`")[1].split("\n## ")[0], f"{section}.{f.name}"
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert list(raw) == [k for k in TOP_KEYS if k in raw], path.name  # the page's order is the files' order
        for section, values in raw.items():
            for key in values if isinstance(values, dict) else ():
                assert f"| `{key}` |" in page.split(f"## `{section}`")[1].split("\n## ")[0], f"{path.name}: {key}"


@dataclass(frozen=True)
class Toy:
    count: int = 3  # things; at least 2
    share: float | None = None  # fraction of them
    mode: str = "a"  # a | b
    free: str = "x"  # anything
    plain: int = 0

    def __post_init__(self) -> None:
        check_int(self.count, "toy.count", low=2)
        if self.share is not None:
            check_float(self.share, "toy.share", low=0, high=1, high_open=True)
        check_choice(self.mode, "toy.mode", ("a", "b"))


def test_units_defaults_and_allowed_values_come_from_the_code():
    assert docs.field_comments(Toy) == {"count": "things; at least 2", "share": "fraction of them", "mode": "a | b",
                                        "free": "anything"}
    rows = {r[0]: r[1:] for r in docs.section_rows(Toy, "toy")}
    assert rows["`count`"] == ("`3`", "integer >= 2", "things; at least 2")
    assert rows["`share`"] == ("`null`", "number in [0, 1) or null", "fraction of them")
    assert rows["`mode`"] == ("`a`", "one of a, b", "a \\| b")
    assert rows["`free`"][1] == "string" and rows["`plain`"] == ("`0`", "integer", "")
