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


class MissingKeyError(RuntimeError):
    """No pseudonymisation key is configured outside demo mode."""


def pseudonym_key(demo: bool = False) -> bytes:
    """The HMAC key: ``LACRIMA_PSEUDONYM_KEY``, else the file named by ``LACRIMA_PSEUDONYM_KEY_FILE``.

    In demo mode (synthetic data) a fixed, public demo key is used when neither is set.
    """
    value = os.environ.get(KEY_ENV)
    if value:
        return value.encode()
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        p = Path(path)
        if not p.is_file():
            raise MissingKeyError(f"{KEY_FILE_ENV} names {p}, which is not a readable file")
        return p.read_bytes().strip()
    if demo:
        return DEMO_KEY
    raise MissingKeyError(
        f"no pseudonymisation key: set {KEY_ENV} or {KEY_FILE_ENV} (a file outside the repository); "
        "only `lacrima demo` runs without one")


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
