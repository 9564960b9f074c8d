"""Value checks of the experiment file's fields: one place, one message style.

Every check raises ``SpecError`` with the field's dotted name, what it got and how to fix it.
The config sections (``DataConfig``, ``TrainConfig``, ``LatencyConfig``, the search sections)
call these from their ``__post_init__``; nothing here imports torch, optuna or mlflow.
"""

from __future__ import annotations

import difflib
import math
import re

from space.errors import SpecError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

def check_bool(value, where: str) -> None:
    """Raise SpecError unless ``value`` is a bool (YAML ``true``/``false``)."""
    if not isinstance(value, bool):
        raise SpecError(f"{where} must be true or false, got {value!r}")


def check_int(value, where: str, *, low: int | None = None, fix: str = "") -> None:
    """Raise SpecError unless ``value`` is an int (not a bool) and ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise SpecError(f"{where} must be >= {low}, got {value}" + (f"; {fix}" if fix else ""))


def check_float(
    value,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
) -> float:
    """Return ``value`` as a float, raising SpecError unless it is a finite number in range.

    Args:
        value: the value to check; ints are accepted (YAML writes ``1`` for ``1.0``).
        where: ``section.field`` named in the message.
        low: lower bound (inclusive unless ``low_open``).
        high: upper bound (inclusive unless ``high_open``).
        low_open: exclude ``low`` itself.
        high_open: exclude ``high`` itself.
        fix: how to fix it, appended to the message.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        interval = f"{left}{lo}, {hi}{right}"
        raise SpecError(f"{where} must be in {interval}, got {value:g}" + (f"; {fix}" if fix else ""))
    return value


def check_choice(value, where: str, choices) -> None:
    """Raise SpecError unless ``value`` is one of ``choices``, suggesting the closest one."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(f"{where}: unknown value {value!r}{hint}; valid: {', '.join(choices)}")


def set_field(cfg, name: str, value) -> None:
    """Normalise a field of a frozen dataclass in its ``__post_init__`` (e.g. an int read as 1 -> 1.0)."""
    object.__setattr__(cfg, name, value)


def check_device_name(value, where: str, extra: tuple[str, ...] = ()) -> None:
    """Raise SpecError unless ``value`` is auto | cpu | cuda | cuda:N (or one of ``extra``)."""
    if not isinstance(value, str) or not (DEVICE_RE.match(value) or value in extra):
        valid = " | ".join((*extra, "auto", "cpu", "cuda", "cuda:N"))
        raise SpecError(f"{where}: unknown device {value!r}; use {valid}")
