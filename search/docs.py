"""The reference page of the experiment file, generated from the config dataclasses.

Every key of every section, with its default, its allowed values and its unit. Nothing on the
page is written by hand:

- the keys and defaults are the dataclasses' fields (``search.config.SECTIONS``, and
  ``space.SearchSpace`` for ``space:``);
- the unit and meaning of a key is the inline comment on its field (``epochs: float = 1.0  #
  passes over the training split``), read from the source;
- the allowed values are what the section's own checks say when handed a value far out of
  range: each check's message states the valid interval or choices (``train.lr must be in
  (0, inf)``, ``search.sampler: ... use one of tpe, nsga2, random, grid``).

    python -m search.docs            # print the page
    python -m search.docs --write    # write docs/experiment-file.md

``tests/search/test_docs.py`` fails when the page and the code differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import tokenize
import types
import typing
from pathlib import Path

from search.config import DEFAULT_OBJECTIVES, OBJECTIVES, SECTIONS, TOP_KEYS
from space import SearchSpace
from space.errors import SpecError
from space.searchspace import Dim

PAGE = Path(__file__).resolve().parents[1] / "docs" / "experiment-file.md"
COMMAND = "python -m search.docs --write"
FAR = {int: (-10**12, 10**12), float: (-1e12, 1e12)}  # values out of every range, to make the checks speak
DIM_VALUES = "integer > 0, a list of them, or a range `{low: 1, high: 4}` (optional `step`)"


def field_comments(cls: type) -> dict[str, str]:
    """field name -> the comment on the line that defines it in ``cls``'s class body."""
    source = inspect.getsource(cls)
    out: dict[str, str] = {}
    line_field: dict[int, str] = {}
    body = re.compile(r"^ {4}(\w+)\s*:")
    for number, line in enumerate(source.splitlines(), 1):
        m = body.match(line)
        if m:
            line_field[number] = m.group(1)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out


def yaml_value(v) -> str:
    """A default as it is written in the YAML file."""
    if isinstance(v, Dim):
        v = v.to_yaml_value()
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _rejection(cls: type, name: str, value, where: str) -> str | None:
    """What the section's checks say about ``name = value`` (None: accepted, or another field spoke)."""
    try:
        cls(**{name: value})
    except SpecError as e:
        text = str(e)
        return text if text.startswith(where) else None
    except Exception:  # a check that fails otherwise on a far value says nothing usable
        return None
    return None


def allowed(cls: type, name: str, hint, where: str) -> str:
    """The allowed values of one field, as its checks state them (see the module doc)."""
    args = typing.get_args(hint)
    nullable = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    kinds = [a for a in args if a is not type(None)] if args else [hint]
    if kinds == [Dim]:
        return DIM_VALUES
    if kinds == [bool]:
        return "true \\| false" + (" \\| null" if nullable else "")
    said = []
    probes = FAR[kinds[0]] if len(kinds) == 1 and kinds[0] in FAR else ("\u2400not-a-value",)
    for value in probes:
        text = _rejection(cls, name, value, where)
        if text is None:
            continue
        m = re.search(r"unknown .*?(?:valid: |use one of |; use )(.+)$", text)
        if m:
            said.append("one of " + m.group(1).removeprefix("one of ").replace(" | ", ", "))
            continue
        m = re.search(rf"^{re.escape(where)} must be (?:an integer |a number )?(.+?)(?:, got |$)", text)
        if m:
            bound = m.group(1)
            said.append({"in (0, inf)": "> 0", "in [0, inf)": ">= 0"}.get(bound, bound))
    kind = {int: "integer", float: "number", str: "string"}
    out = " or ".join(kind.get(k, k.__name__) for k in kinds)
    if said:  # a bound follows the type ("integer >= 1"); a sentence of its own stands alone ("one of ...")
        bounds = " and ".join(dict.fromkeys(said))
        out = f"{out} {bounds}" if bounds.startswith(("<", ">", "in ")) else bounds
    if nullable and "null" not in out:
        out += " or null"
    return out.replace("|", "\\|")


def section_rows(cls: type, section: str) -> list[tuple[str, str, str, str]]:
    """(key, default, allowed values, unit and meaning) for every field of one section."""
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        where = f"{section}.{f.name}"
        rows.append((f"`{f.name}`", f"`{yaml_value(default)}`", allowed(cls, f.name, hints[f.name], where),
                     comments.get(f.name, "").replace("|", "\\|")))
    return rows


def summary(cls: type) -> str:
    """The first paragraph of a class docstring, on one line ('' when it has none)."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses write when there is no docstring
        return ""
    doc = inspect.cleandoc(doc)
    return " ".join(doc.split("\n\n")[0].split())


def table(rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| key | default | allowed values | unit and meaning |", "| --- | --- | --- | --- |"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def page() -> str:
    """The whole reference page of the experiment file, in Markdown."""
    out = [
        "# The experiment file",
        "",
        f"<!-- Generated from search/config.py and space/searchspace.py by `{COMMAND}`; edit those, not this page. -->",
        "",
        "An experiment file is YAML with the sections below, in this order: "
        + ", ".join(f"`{k}`" for k in TOP_KEYS) + ". Every key may be left out (it takes its default); an "
        "unknown key is an error that names the closest valid one. `--set section.key=value` overrides one key "
        "on the command line (the value is read as YAML). `experiments/quickstart.yaml` shows every key with a "
        "comment.",
        "",
        "Keys that change a trial's result (everything under `space`, `objectives`, `constraints`, `data` but "
        "`root` and `download`, `train` but `device` and `threads`, `latency` but `device`, and `search.seed`) "
        "make up the study's recipe: a study is resumed only with the same recipe, and commands that read a study "
        "(`pareto`, `report`, `export`) take it from the study.",
    ]
    for name in TOP_KEYS:
        out += ["", f"## `{name}`", ""]
        if name == "space":
            intro = (summary(SearchSpace) + " Each dimension is a fixed value (`4`), a list of choices "
                     "(`[1, 2, 4, 8]`) or an integer range (`{low: 1, high: 4}`, optional `step`). `input_size`, "
                     "`in_ch` and `num_classes` come from the data; the file may leave them out.")
            out += [intro, "", *table(section_rows(SearchSpace, "space"))]
        elif name == "objectives":
            choices = ", ".join(f"`{o}` ({d}{', ' + u if u else ''})" for o, (d, u) in OBJECTIVES.items())
            out += [f"A list of the objectives the study optimises, each once, from: {choices}. Default: "
                    f"`{yaml_value(list(DEFAULT_OBJECTIVES))}`. Parameters and MACs are counted analytically; "
                    "latency in milliseconds as the `latency` section measures it."]
        else:
            cls = SECTIONS[name]
            intro = summary(cls)
            out += ([intro, ""] if intro else []) + table(section_rows(cls, name))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(PAGE.parents[1])}")
    args = parser.parse_args(argv)
    text = page()
    if args.write:
        PAGE.write_text(text, encoding="utf-8")
        print(f"wrote {PAGE}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
