"""The numeric parameter checks every config dataclass uses (one copy): each raises FieldError naming the field.

A FieldError is a ValueError whose text is "<field> <problem>"; a command line that knows which flag sets the field
reports "<flag> <problem>" from its `field` and `problem` attributes instead of rewriting the text.
"""

from __future__ import annotations

import math


class FieldError(ValueError):
    """A configuration field with a bad value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_positive(name: str, value: float) -> float:
    """A finite number > 0 (returned as float)."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise FieldError(name, f"must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """A finite number >= 0 (returned as float)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise FieldError(name, f"must be a finite number >= 0, got {value!r}")
    return float(value)


def check_ratio(name: str, value: float) -> None:
    """A number in [0, 1]."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise FieldError(name, f"must be a number in [0, 1], got {value!r}")


def check_int_at_least(name: str, value: int, low: int) -> None:
    """An int (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FieldError(name, f"must be an int >= {low}, got {value!r}")
