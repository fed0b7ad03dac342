"""Sizes as admins type them (targetcli's syntax) and as targetcli prints them."""

from __future__ import annotations

import re

from vhostscsi.config.errors import ConfigError

_SIZE_RE = re.compile(r"^([0-9]+)([kmgt]?)b?$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def human_to_bytes(text: str) -> int:
    """'1G' -> 1073741824. Accepts bytes or K/M/G/T with optional 'B'/'iB' (powers of 1024)."""
    match = _SIZE_RE.match(str(text).replace("i", "").lower())
    if not match:
        raise ConfigError(
            f"invalid size {text!r}: use a number of bytes or a number with a K, M, G or T suffix (e.g. 1G)"
        )
    return int(match.group(1)) * 1024 ** _POWERS[match.group(2)]


def bytes_to_human(size: int) -> str:
    """1073741824 -> '1.0GiB', as in targetcli's `ls` summaries."""
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024.0
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024.0:
            return f"{value:3.1f}{unit}"
        value /= 1024.0
    return f"{value * 1024.0:3.1f}PiB"
