"""Byte sizes as people write them (``512MiB``, ``1.5GB``) and as tiertop prints them."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``1GiB``, ``512MiB``, ``64M``, ``1.5 GB``, ``4096`` or ``100B``.

    ``KiB``/``MiB``/... and the bare letters ``K``/``M``/``G``/... are powers of 1024;
    ``kB``/``MB``/``GB``/... are powers of 1000.

    Raises:
        ValueError: the text is not a size, or not a whole number of bytes.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must be >= 0, got {text}")
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try e.g. 1GiB, 512MiB, 65536)")
    number, prefix, binary, byte_suffix = match.groups()
    power = _POWERS[prefix.lower()]
    if binary and not prefix:
        raise ValueError(f"not a size: {text!r} (try e.g. 1GiB, 512MiB, 65536)")
    base = 1000 if (prefix and byte_suffix and not binary) else 1024
    value = float(number) * base**power
    if value != int(value):
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in binary units with up to three significant figures: '64 MiB', '1.5 GiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B" or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
