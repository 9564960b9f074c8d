"""Key checking shared by every dict -> dataclass parser (space specs and experiment configs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping


class SpecError(ValueError):
    """A spec, space or config value that cannot work; the message names the field and the fix."""


def check_keys(data: Mapping, allowed: Iterable[str], where: str) -> None:
    """Raise SpecError for the first key of `data` not in `allowed`, suggesting the closest one.

    Args:
        data: the mapping read from YAML.
        allowed: the valid keys.
        where: dotted location used in the message (e.g. ``"space"``).
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(allowed)}"
            raise SpecError(f"{where}: unknown key '{key}' ({hint})")
