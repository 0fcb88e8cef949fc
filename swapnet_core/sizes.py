"""Byte sizes: parsing budget strings and printing sizes, in one place."""

from __future__ import annotations

import math
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
    weight bytes) is given, a share of it: '25%', '0.25x', '1/4'. Raises ValueError with the reason."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        share = None
        if m := _FRACTION.match(s):
            if int(m.group(2)) == 0:
                raise ValueError(f"not a size: {text!r} (division by zero)")
            share = float(Fraction(int(m.group(1)), int(m.group(2))))
        elif s.endswith("%"):
            share = _number(s[:-1], text) / 100
        elif s.lower().endswith("x"):
            share = _number(s[:-1], text)
        if share is not None:
            if of is None:
                raise ValueError(f"{text!r} is a share of the model size, but no model size is known here")
            value = share * of
        else:
            m = _SIZE.match(s)
            if not m or m.group(2).lower() not in _UNITS:
                raise ValueError(f"not a size: {text!r} (examples: 96MB, 64MiB, 25%, 1/4, 0.25x)")
            value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a size must be a positive finite number, got {text!r}")
    return int(value)


def _number(s: str, original) -> float:
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"not a size: {original!r}") from None


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
