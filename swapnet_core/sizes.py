"""Byte sizes: parsing budget strings and printing sizes, in one place."""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
    "k": 2**10, "m": 2**20, "g": 2**30,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_FRACTION = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")


def format_bytes(n: float) -> str:
    """Human-readable size in IEC units (MiB = 2**20 bytes)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def parse_size(text: str | int | float, *, of: int | None = None) -> int:
    """Parse a size: '96MB' (SI), '96MiB' (IEC), '1234' (bytes), or, when `of` (the model's
    weight bytes) is given, a share of it: '25%', '0.25x', '1/4'. Raises BudgetError (a ValueError)
    with the reason; the result is at least one byte."""
    from .errors import BudgetError  # errors imports this module for format_bytes

    if isinstance(text, bool) or not isinstance(text, (str, numbers.Real)):
        raise BudgetError(f"not a size: {text!r} (a {type(text).__name__}; "
                          f"expected a number of bytes or a string such as {_EXAMPLES})")
    if isinstance(text, numbers.Integral):
        value: Fraction | float = Fraction(int(text))  # exact: no float overflow for huge ints
    elif not isinstance(text, str):
        value = float(text)
    else:
        s = text.strip()
        if len(s) > 64:  # no size needs more; bounds the exact arithmetic below
            raise BudgetError(f"not a size: {text[:40]!r}... ({len(s)} characters)")
        if not s.isascii():  # float() would take other scripts' digits; the size grammar does not
            raise BudgetError(f"not a size: {text!r} (examples: {_EXAMPLES})")
        share = None
        if m := _FRACTION.match(s):
            if int(m.group(2)) == 0:
                raise BudgetError(f"not a size: {text!r} (division by zero)")
            share = Fraction(int(m.group(1)), int(m.group(2)))
        elif s.endswith("%"):
            share = _number(s[:-1], text) / 100
        elif s.lower().endswith("x"):
            share = _number(s[:-1], text)
        if share is not None:
            if of is None:
                raise BudgetError(f"{text!r} is a share of the model size, but no model size is known here")
            value = share * of
        else:
            m = _SIZE.match(s)
            if not m or m.group(2).lower() not in _UNITS:
                raise BudgetError(f"not a size: {text!r} (examples: {_EXAMPLES})")
            value = _exact(m.group(1)) * _UNITS[m.group(2).lower()]
    if isinstance(value, float) and not math.isfinite(value) or value <= 0:  # float: a Python number given
        raise BudgetError(f"a size must be a positive finite number, got {text!r}")
    if int(value) < 1:
        raise BudgetError(f"a size must be at least one byte, got {text!r}")
    if int(value) > MAX_SIZE:  # int64 everywhere below (ROS messages, numpy, the kernel)
        raise BudgetError(f"a size must be at most {MAX_SIZE} bytes (8 EiB), got {text!r}")
    return int(value)


MAX_SIZE = 2**63 - 1
_EXAMPLES = "96MB, 64MiB, 25%, 1/4, 0.25x"
_NUMBER = re.compile(r"^\s*[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?\s*$", re.IGNORECASE)


def _number(s: str, original) -> Fraction:
    from .errors import BudgetError

    if not _NUMBER.match(s):  # not float(): it takes 'nan', 'inf', '1_0' and signs
        raise BudgetError(f"not a size: {original!r} (examples: {_EXAMPLES})")
    return _exact(s.strip())


def _exact(number: str) -> Fraction | float:
    """The decimal exactly (no float rounding of large sizes); a float where the exponent is so large
    that it is inf or 0 anyway (Fraction would compute 10**exponent)."""
    mantissa, _, exponent = number.lower().partition("e")
    if exponent and abs(int(exponent)) > 64:
        return float(number)
    return Fraction(number)


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
