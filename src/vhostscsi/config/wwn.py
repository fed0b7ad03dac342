"""World-wide names: generation and validation, in the formats LIO and rtslib use.

Kept separate from the model so the shell's error messages and the model's checks agree on one
definition of a valid name.
"""

from __future__ import annotations

import re
import uuid

# rtslib accepts NAA types 1, 2, 5 and C-F with 15 more hex digits for the vhost fabric.
_NAA_RE = re.compile(r"naa\.[125c-fC-F][0-9a-fA-F]{15}$")
_UNIT_SERIAL_RE = re.compile(r"[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")
# LIO's OpenFabrics OUI prefix: NAA type 5 (IEEE registered) + company id 00 14 05.
NAA_PREFIX = "naa.5001405"


class WwnError(ValueError):
    """A WWN that LIO's vhost fabric would reject."""


def generate_naa() -> str:
    """A fresh vhost target/nexus WWN: NAA 5, OUI 001405, 9 random hex digits (as rtslib)."""
    return NAA_PREFIX + uuid.uuid4().hex[-9:]


def generate_unit_serial() -> str:
    """A fresh T10 unit serial: the disk's lasting identity (VPD 0x80 and the NAA in VPD 0x83)."""
    return str(uuid.uuid4())


def generate_lun_alias() -> str:
    """The 10-hex-digit name of the LUN -> storage object link, as rtslib makes it."""
    return uuid.uuid4().hex[-10:]


def normalize_naa(wwn: str) -> str:
    """Return the canonical (lower-case) form of a vhost WWN, or raise WwnError saying why."""
    text = wwn.strip()
    if text[:4].lower() == "naa.":
        text = "naa." + text[4:]
    if not _NAA_RE.match(text):
        raise WwnError(
            f"invalid WWN {wwn!r}: a vhost WWN is 'naa.' followed by 16 hex digits, "
            "the first one 1, 2, 5 or c-f (e.g. naa.500140568720f76f)"
        )
    return text.lower()


def is_unit_serial(text: str) -> bool:
    """True if text has the UUID shape rtslib uses for unit serials."""
    return bool(_UNIT_SERIAL_RE.match(text))
