"""The local storage backend and the privacy helpers."""

import pandas as pd
import pytest

from lacrima.privacy import MissingKeyError, pseudonym_key, pseudonymise, suppress_small
from lacrima.storage import LocalStorage, open_storage


def test_conditional_write_never_overwrites(tmp_path):
    st = LocalStorage(tmp_path)
    assert st.write_bytes("raw/us/abc.csv", b"one", if_absent=True, metadata={"site": "us"})
    assert not st.write_bytes("raw/us/abc.csv", b"two", if_absent=True)
    assert st.read_bytes("raw/us/abc.csv") == b"one"
    assert st.metadata("raw/us/abc.csv") == {"site": "us"}
    assert [o.key for o in st.list("raw")] == ["raw/us/abc.csv"]     # metadata is not listed


@pytest.mark.parametrize("key", ["../escape", "/abs", "raw//x", "raw/../../x", "raw/./x"])
def test_keys_cannot_escape_the_root(tmp_path, key):
    with pytest.raises(ValueError, match="invalid storage key"):
        LocalStorage(tmp_path).write_bytes(key, b"x")


def test_open_storage_reads_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LACRIMA_STORAGE", str(tmp_path / "store"))
    assert open_storage().location == str((tmp_path / "store").resolve())


def test_pseudonyms_are_keyed_stable_and_site_specific():
    ids = pd.Series(["IT-0042", "IT-0043", "IT-0042"])
    a = pseudonymise("it", ids, b"k1")
    assert a[0] == a[2] and a[0] != a[1]
    assert pseudonymise("it", ids, b"k2")[0] != a[0]
    assert pseudonymise("us", ids, b"k1")[0] != a[0]
    assert not a.str.contains("0042").any()


def test_missing_key_is_a_clear_error_outside_demo(monkeypatch):
    monkeypatch.delenv("LACRIMA_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("LACRIMA_PSEUDONYM_KEY_FILE", raising=False)
    with pytest.raises(MissingKeyError, match="LACRIMA_PSEUDONYM_KEY"):
        pseudonym_key()
    assert pseudonym_key(demo=True)


def test_small_cells_suppressed():
    assert [suppress_small(n) for n in (0, 1, 4, 5, 120)] == ["0", "<5", "<5", "5", "120"]


def test_parquet_frame_is_what_pandas_read_parquet_gives():
    import io

    import numpy as np

    from lacrima.storage import parquet_frame

    frame = pd.DataFrame({
        "text": ["a", None, "c"], "empty_text": [None, None, None],
        "count": pd.array([1, None, 3], dtype="Int64"), "flag": pd.array([True, None, False], dtype="boolean"),
        "x": [0.5, np.nan, 2.0], "when": pd.to_datetime(["2024-01-01", None, "2024-03-01"]),
        "level": pd.Categorical(["low", "high", None])})
    for part in (frame, frame.iloc[:0], frame.set_index("text")):
        buf = io.BytesIO()
        part.to_parquet(buf)
        pd.testing.assert_frame_equal(parquet_frame(buf.getvalue()), pd.read_parquet(io.BytesIO(buf.getvalue())))


def test_copy_publishes_the_same_bytes_and_keeps_create_if_absent(tmp_path):
    st = LocalStorage(tmp_path)
    st.write_bytes("results/us/k/page.html", b"page")
    assert st.copy("results/us/k/page.html", "reports/r1/site-us.html", if_absent=True)
    assert not st.copy("results/us/k/page.html", "reports/r1/site-us.html", if_absent=True)
    assert st.copy("results/us/k/page.html", "reports/latest/site-us.html")
    st.write_bytes("results/us/k2/page.html", b"new page")
    assert st.copy("results/us/k2/page.html", "reports/latest/site-us.html")     # replaces
    assert not st.copy("results/us/k2/page.html", "reports/r1/site-us.html", if_absent=True)
    assert st.read_bytes("reports/r1/site-us.html") == b"page"
    assert st.read_bytes("reports/latest/site-us.html") == b"new page"
    # a later write to the source never reaches a copy (writes replace, never change in place)
    st.write_bytes("results/us/k/page.html", b"changed")
    assert st.read_bytes("reports/r1/site-us.html") == b"page"
    assert [o.key for o in st.list("reports")] == ["reports/latest/site-us.html",
                                                   "reports/r1/site-us.html"]


def test_a_file_renamed_away_while_listing_is_not_an_error(tmp_path, monkeypatch):
    # A write running at the same time renames its temporary file into place between the
    # folder's listing and the entry's lstat (the portal's concurrent uploads met it: 503).
    import os

    from lacrima import storage as storage_module

    st = LocalStorage(tmp_path / "store")
    st.write_bytes("landing/us/a.csv", b"a")
    st.write_bytes("landing/us/b.csv", b"b")
    real = os.scandir

    def scandir_then_b_moves(folder):
        entries = list(real(folder))
        gone = tmp_path / "store" / "landing" / "us" / "b.csv"
        if gone.exists():
            gone.rename(tmp_path / "elsewhere.csv")
        return iter(entries)

    monkeypatch.setattr(storage_module.os, "scandir", scandir_then_b_moves)
    assert [o.key for o in st.list("landing/us")] == ["landing/us/a.csv"]
