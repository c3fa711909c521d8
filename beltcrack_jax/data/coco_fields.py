"""Strict readers for the fields of COCO json entries: a value of the wrong type is an error, never coerced.

Python would happily read `int(3.7)` as 3, `int("12")` as 12 and iterate the string "8512" as four box numbers;
each reader here accepts only what the field means and raises `FieldError` saying what it got and what it expects.
"""

from __future__ import annotations

import math

INT32_MAX = 2**31 - 1      # frame numbers and sizes are stored as int32
INT64_MAX = 2**63 - 1      # ids are stored as int64
MISSING = object()         # marks a field absent from its entry


class FieldError(ValueError):
    """A json field has the wrong type or value; the message says what was found and what is expected."""


def describe(value) -> str:
    """A json value as a user sees it, with its json type: "'192px' (a string)", "[1, 2] (a list)"."""
    if value is MISSING:
        return "missing"
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
             (dict, "an object"), (type(None), "null"))
    kind = next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(value, *, minimum: int | None = None, maximum: int = INT64_MAX, expected: str = "an integer") -> int:
    """An int, or a float with no fraction (some exporters write 12.0); bools, strings, 3.7, NaN are errors."""
    if not _is_number(value) or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise FieldError(f"is {describe(value)}; expected {expected}")
    v = int(value)
    if (minimum is not None and v < minimum) or v > maximum:
        raise FieldError(f"is {describe(value)}; expected {expected}")
    return v


def image_id(value) -> int:
    # -1 marks "not in the json" in the records, so json ids must be >= 0.
    return integer(value, minimum=0, expected="a non-negative integer (image id)")


def annotation_id(value) -> int:
    return integer(value, minimum=-INT64_MAX, expected="an integer (annotation id)")


def category_id(value) -> int:
    return integer(value, minimum=1, maximum=INT32_MAX, expected="an integer >= 1 (category id; label = id - 1)")


def frame_size(value) -> int:
    return integer(value, minimum=1, maximum=INT32_MAX, expected="a positive integer (pixels)")


def box_xywh(value) -> tuple[float, float, float, float]:
    """[x, y, w, h] of 4 finite numbers (COCO xywh, original pixels)."""
    expected = "a list [x, y, w, h] of 4 finite numbers"
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise FieldError(f"is {describe(value)}; expected {expected}")
    box = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in box):
        raise FieldError(f"is {describe(value)}; expected {expected} (NaN / Infinity are not coordinates)")
    return box


def text(value, *, expected: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(f"is {describe(value)}; expected {expected}")
    return value


def intended_int(value) -> int | None:
    """The integer a malformed id most likely meant ('4' -> 4, [4] -> 4, 4.5 -> 4), or None. Used only to find
    the annotations that belong with a rejected entry, never to accept the value."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if _is_number(value) and math.isfinite(value):
        return int(value)
    return None


def value_key(value) -> str:
    """A hashable stand-in for any json value (to recognise a rejected id when an annotation names it)."""
    return repr(value)
