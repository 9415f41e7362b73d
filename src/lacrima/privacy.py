"""Privacy rules of protocol section 8: keyed pseudonyms and small-cell suppression."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported where used: `lacrima run` checks the key before anything heavy loads.

KEY_ENV = "LACRIMA_PSEUDONYM_KEY"
KEY_FILE_ENV = "LACRIMA_PSEUDONYM_KEY_FILE"
DEMO_KEY = b"lacrima-demo-key: synthetic data only"
MIN_CELL = 5
# A pseudonym key shorter than this is refused: HMAC under a short or empty key is a hash
# anyone can recompute from a guessed ID (an ID space of a few thousand numbers).
MIN_KEY_BYTES = 16


class MissingKeyError(RuntimeError):
    """No pseudonymisation key is configured outside demo mode."""


def pseudonym_key(demo: bool = False) -> bytes:
    """The HMAC key: ``LACRIMA_PSEUDONYM_KEY``, else the file named by ``LACRIMA_PSEUDONYM_KEY_FILE``.

    In demo mode (synthetic data) the fixed, public demo key, always: demo rows and real
    rows never share a key, so they can never share a store (``catalog.check_key``).

    Raises
    ------
    MissingKeyError
        No key, or a key shorter than ``MIN_KEY_BYTES`` (an empty key file gives an
        HMAC anyone can compute).
    """
    if demo:
        return DEMO_KEY
    value = os.environ.get(KEY_ENV) or None        # set but empty: not set
    where = KEY_ENV
    if value is not None and value.strip():
        key = value.encode()
    else:
        path = os.environ.get(KEY_FILE_ENV)
        if not path and value is None:
            raise MissingKeyError(
                f"no pseudonymisation key: set {KEY_ENV} or {KEY_FILE_ENV} (a file outside the "
                "repository); only `lacrima demo` runs without one")
        if not path:
            key = b""
        else:
            p = Path(path)
            if not p.is_file():
                raise MissingKeyError(f"{KEY_FILE_ENV} names {p}, which is not a readable file")
            key, where = p.read_bytes().strip(), f"{KEY_FILE_ENV} ({p})"
    return check_key_strength(key, where)


def check_key_strength(key: bytes, where: str = "the key") -> bytes:
    """``key`` if it is long enough; else MissingKeyError saying how to make one."""
    if len(key.strip()) < MIN_KEY_BYTES:
        raise MissingKeyError(
            f"{where}: the pseudonymisation key is {'blank' if not key.strip() else 'too short'} "
            f"({len(key.strip())} bytes; at least {MIN_KEY_BYTES}): make one with "
            "`python -c \"import secrets; print(secrets.token_hex(32))\"`")
    return key


def pseudonymise(site: str, ids: pd.Series, key: bytes) -> pd.Series:
    """Keyed HMAC-SHA256 pseudonyms ``<site>-<16 hex>``, stable for the same key, site and ID.

    The site is part of the message so the same raw ID at two sites gives two pseudonyms.
    """
    import pandas as pd  # noqa: F401 - ids is a Series; kept for symmetry with suppress_small

    def one(raw) -> str:
        digest = hmac.new(key, f"{site}\x1f{raw}".encode(), hashlib.sha256).hexdigest()
        return f"{site}-{digest[:16]}"
    return ids.astype(str).map(one).astype(str)


def suppress_small(count: int | float, min_cell: int = MIN_CELL) -> str:
    """A count for display: ``'<5'`` when 1..min_cell-1, else the count itself."""
    import pandas as pd

    if pd.isna(count):
        return ""
    c = int(count)
    return f"<{min_cell}" if 0 < c < min_cell else str(c)
