"""Importing the library stays cheap: statsmodels only where it is used, never Prefect or flows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lacrima.stats import adjust_pvalues


def _modules_after(statement: str) -> set[str]:
    # a fresh interpreter: this test session has statsmodels loaded already
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.process
@pytest.mark.parametrize("module", ["lacrima.analysis", "lacrima.stats", "lacrima.pooling"])
def test_import_does_not_load_statsmodels(module):
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    assert not {m for m in loaded if m.split(".")[0] == "statsmodels"}


@pytest.mark.process
def test_regression_loads_linear_model_not_statsmodels_api():
    loaded = _modules_after(
        "import numpy as np; from lacrima.stats import ols_hc3; "
        "r = ols_hc3(np.arange(10.0) ** 1.5, np.arange(10.0)[:, None], ['x']); "
        "assert r.note == '', r.note")
    assert "statsmodels.regression.linear_model" in loaded
    assert "statsmodels.api" not in loaded


@pytest.mark.parametrize("method", ["bonferroni", "fdr_bh"])
def test_lazily_imported_methods_match_statsmodels(method):
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, np.nan, 0.04, 0.03, 0.2])
    got = adjust_pvalues(p, method)
    assert np.isnan(got[1])
    finite = ~np.isnan(p)
    np.testing.assert_allclose(got[finite], multipletests(p[finite], method=method)[1])
    if method == "bonferroni":
        np.testing.assert_allclose(got[finite], np.minimum(p[finite] * 4, 1))


@pytest.mark.process
def test_importing_every_module_loads_neither_prefect_nor_flows():
    # What doctest collection (--doctest-modules over src/lacrima) does. The command line
    # lives in flows/ (the app layer), so every module of the package is imported here.
    loaded = _modules_after(
        "import importlib, pkgutil, lacrima; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(lacrima.__path__, "
        "'lacrima.')]")
    assert {"lacrima.intake", "lacrima.stats.regression"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] in ("prefect", "flows")}



def _cli_modules(cwd, *argv: str) -> set[str]:
    """Modules loaded by the ``lacrima`` command (``flows.cli:main``) run with ``argv``."""
    import os

    probe = ("import sys\nfrom flows.cli import main\nsys.argv = ['lacrima', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print('exit', code)\nprint('\\n'.join(sys.modules))\n")
    # this session's path (src and flows of this checkout first), whatever the cwd
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=120)
    lines = out.stdout.splitlines()
    exit_line = next((i for i, line in enumerate(lines) if line.startswith("exit ")), None)
    assert exit_line is not None and lines[exit_line] == "exit 0", (out.stdout[-2000:],
                                                                    out.stderr[-2000:])
    return set(lines[exit_line + 1:])


@pytest.mark.parametrize("argv", [("--help",), ("check", "{drop}", "--site", "us")],
                         ids=["help", "check"])
@pytest.mark.process
def test_help_and_check_load_neither_prefect_nor_matplotlib(tmp_path, demo_drops, argv):
    loaded = _cli_modules(tmp_path, *(a.format(drop=demo_drops["us"]) for a in argv))
    assert "flows.cli" in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("prefect", "matplotlib"))
    assert not heavy, heavy[:5]
