"""The report's jobs live in modules of their own, each importable alone (issue 14, item 1).

Number formatting (``apa``), disclosure control (``disclosure``) and the pure table builders
(``tables``) load neither the rendering (``report``, Jinja), nor the run machinery
(``steps``), nor Prefect or ``flows``; ``apa`` needs no other lacrima module at all.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

NEVER = {"lacrima.report", "lacrima.steps", "prefect", "flows", "jinja2"}


def _modules_after(statement: str) -> set[str]:
    # a fresh interpreter: this test session has imported everything already
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["lacrima.apa", "lacrima.disclosure", "lacrima.tables",
                                    "lacrima.formula"])
@pytest.mark.process
def test_a_job_module_imports_alone(module):
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    assert not {m for m in loaded if m in NEVER or m.split(".")[0] in NEVER}


@pytest.mark.process
def test_number_formatting_needs_no_other_lacrima_module():
    loaded = _modules_after("import lacrima.apa")
    assert {m for m in loaded if m.startswith("lacrima.")} == {"lacrima.apa"}
