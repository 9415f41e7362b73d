"""Restructuring changes no number: results.csv byte for byte, on the demo and on 125 sites.

The reference files under ``tests/reference/golden/`` were written by this module (last: the
merge of issues 23 and 24, on the BLAS kernel named in ``blas_kernel.txt``);
a change that alters any estimate, any row or the CSV format fails here, and the difference is
shown line by line. A deliberate change of a number rewrites the references in its own commit
(``LACRIMA_WRITE_GOLDEN=1 pytest tests/test_golden.py``), saying why.
"""

from __future__ import annotations

import difflib
import gzip
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "reference" / "golden"
CONSORTIUM_SITES, CONSORTIUM_N, SEED = 125, 40, 20261129
RUN_ID = "golden"


def consortium_results(work: Path) -> bytes:
    """results.csv of a 125-site consortium (40 participants a site), through the library steps."""
    from lacrima import exports, intake, steps
    from lacrima.consortium import make_consortium, write_consortium_drops
    from lacrima.privacy import DEMO_KEY
    from lacrima.storage import LocalStorage
    from lacrima.study import load_sites, load_study
    from lacrima.vocabulary import RESULTS_COLUMNS

    made = make_consortium(work / "sites", CONSORTIUM_SITES, n=CONSORTIUM_N)
    drops = write_consortium_drops(made.root, work / "drops", seed=SEED, text_formats=True)
    study, sites = load_study(made.root), load_sites(made.root)
    storage = LocalStorage(work / "store")
    for s in sites:
        intake.upload(storage, s, drops[s.code])
    intake.ingest_sites(storage, sites, study, DEMO_KEY)
    analyses = [steps.site_step(storage, s, study, outputs=False) for s in sites]
    comparison = steps.compare_sites([a for a in analyses if a], study, sites)
    results = comparison.results.assign(run_id=RUN_ID).reindex(columns=list(RESULTS_COLUMNS))
    return exports.to_csv_bytes(results)


def blas_kernel() -> str:
    """The BLAS kernel numpy runs here (OpenBLAS picks one per processor: SkylakeX, Haswell...).
    Sums and products of the same numbers differ in their last bits from one kernel to another,
    so byte-identity holds on the kernel the references were written with."""
    import numpy  # noqa: F401  (loads the BLAS it reports)
    from threadpoolctl import threadpool_info

    return ",".join(sorted({f"{i['internal_api']}:{i.get('architecture')}"
                            for i in threadpool_info() if i["user_api"] == "blas"}))


def _same(got: bytes, name: str) -> None:
    path, kernel_file = GOLDEN / name, GOLDEN / "blas_kernel.txt"
    if os.environ.get("LACRIMA_WRITE_GOLDEN"):        # a deliberate change of numbers only
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(got, mtime=0))
        kernel_file.write_text(blas_kernel() + "\n")
    reference = gzip.decompress(path.read_bytes())
    if got == reference:
        return
    written_on = kernel_file.read_text().strip()
    if written_on != blas_kernel():
        # Another processor: the same rows and text, numbers to the last bits a kernel changes
        # (a singular mixed model's flat REML criterion turns 1e-13 into ~1e-5 in theta).
        import io

        import pandas as pd

        a, b = (pd.read_csv(io.BytesIO(x)) for x in (reference, got))
        num = a.select_dtypes("number").columns
        pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
        pd.testing.assert_frame_equal(a[num], b[num], check_exact=False, rtol=1e-4, atol=1e-12,
                                      check_dtype=False,
                                      obj=f"{name} (references from BLAS {written_on}, "
                                          f"here {blas_kernel()})")
        return
    diff = difflib.unified_diff(reference.decode().splitlines(), got.decode().splitlines(),
                                "reference", "now", n=0, lineterm="")
    pytest.fail(f"{name} differs from the reference:\n" + "\n".join(list(diff)[:40]))


def test_demo_results_csv_is_unchanged(demo_run):
    _same(demo_run.storage.read_bytes(f"{demo_run.outputs.prefix}/results.csv"),
          "demo_results.csv.gz")


@pytest.mark.slow
def test_consortium_results_csv_is_unchanged(tmp_path):
    _same(consortium_results(tmp_path), "consortium125_results.csv.gz")
