"""Identifiers and file names: transfer ids, and the only way a name reaches a path join.

A transfer id is a ULID (26 Crockford base32 characters, time-sortable). The
remote name of a sealed document carries it, with the document type and the
(sanitised) original name, so the receiver can tell all three without
trusting anything else the sender says:

    01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.INV-2026-0042.xml.pgp
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TRANSFER_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
DOCUMENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Why this set: portable across POSIX, Windows shares and SFTP servers, and never a path operator.
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 128  # a remote name must stay under the 255-byte limit with id and type added
SEALED_SUFFIX = ".pgp"
TEMP_PREFIX = "."
TEMP_SUFFIX = ".part"


def new_transfer_id(moment: datetime) -> str:
    """A ULID: 48-bit millisecond timestamp + 80 random bits, Crockford base32."""
    millis = int(moment.timestamp() * 1000)
    value = (millis << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_safe_name(name: str) -> bool:
    """True when ``name`` is a plain file name we are willing to join to a directory."""
    return bool(SAFE_NAME_RE.match(name)) and ".." not in name


def safe_join(directory: str | os.PathLike[str], name: str) -> str:
    """Join a validated name to a directory; anything else raises ValueError."""
    if not is_safe_name(name):
        raise ValueError(f"unsafe file name {name!r}: only letters, digits, '.', '_' and '-' are allowed")
    return os.path.join(os.fspath(directory), name)


def sanitise(name: str) -> str:
    """Map a local file name onto the safe alphabet (for use inside a remote name)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "document"
    cleaned = cleaned.replace("..", "_")
    return cleaned[:MAX_NAME_LENGTH]


@dataclass(frozen=True, slots=True)
class SealedName:
    transfer_id: str
    document_type: str
    original: str

    def __str__(self) -> str:
        return f"{self.transfer_id}.{self.document_type}.{self.original}{SEALED_SUFFIX}"

    @property
    def temp(self) -> str:
        """The name an upload has until it is complete."""
        return f"{TEMP_PREFIX}{self}{TEMP_SUFFIX}"


def sealed_name(transfer_id: str, document_type: str, original: str) -> SealedName:
    return SealedName(transfer_id, document_type, sanitise(original))


def parse_sealed_name(name: str) -> SealedName:
    """Parse a remote name strictly; raise ValueError for anything we did not make."""
    if not is_safe_name(name) or not name.endswith(SEALED_SUFFIX):
        raise ValueError(f"not a sealed-document name: {name!r}")
    parts = name[: -len(SEALED_SUFFIX)].split(".", 2)
    if len(parts) != 3:
        raise ValueError(f"not a sealed-document name: {name!r}")
    transfer_id, document_type, original = parts
    if not TRANSFER_ID_RE.match(transfer_id) or not DOCUMENT_TYPE_RE.match(document_type) or not original:
        raise ValueError(f"not a sealed-document name: {name!r}")
    return SealedName(transfer_id, document_type, original)


def is_temporary(name: str) -> bool:
    """Names an upload or an editor uses while a file is incomplete: never taken."""
    lowered = name.lower()
    return (
        name.startswith(".")
        or name.startswith("~")
        or lowered.endswith((".part", ".tmp", ".partial", ".filepart", ".crdownload", ".swp", "~"))
    )
