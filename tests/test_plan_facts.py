"""The plan's facts live in the plan: no scale, item or variable name of this study in the
code of src/lacrima (issue 21, item 5). Names may appear in docstrings and comments (they
explain with the study's example), never in code: a report label, a completion check or a
table row reads them from sites/study.toml.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lacrima.tables import descriptives_frame

SRC = Path(__file__).resolve().parents[1] / "src" / "lacrima"
# Names of this study: its instruments, item prefixes, scales and table variables.
STUDY = re.compile(r"WAI-SR|CTSCM|\b[Ww]ai_|\b[Cc]tsc_|\brq_|[Aa]lliance|[Aa]ttachment|"
                   r"\b[Gg]ender\b|^age$|cried_in_therapy")
# Not yet: the synthetic-data model (synth.py) and its schema in contract.py still name this
# study's instruments (issue 21, item 5, left open).
LEFT = {"synth.py", "contract.py"}


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Every name, attribute and string constant of the module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            out.append((n.lineno, n.value))
        elif isinstance(n, ast.Name):
            out.append((n.lineno, n.id))
        elif isinstance(n, ast.Attribute):
            out.append((n.lineno, n.attr))
        elif isinstance(n, ast.arg):
            out.append((n.lineno, n.arg))
    return out


def test_no_name_of_this_study_in_the_library_code():
    found = [f"{p.relative_to(SRC)}:{line}: {word!r}" for p in sorted(SRC.rglob("*.py"))
             if p.name not in LEFT for line, word in _code_words(p) if STUDY.search(word)]
    assert not found, "\n".join(found)


def test_the_participants_table_follows_the_plan(study, memory_analyses):
    import dataclasses

    rows = list(descriptives_frame(memory_analyses, study)["Characteristic"])
    assert "Age (years), M (SD)" in rows and "Gender identity: woman, n (%)" in rows
    raw = dict(study.raw, descriptives={"mean_sd": ["therapy_months"], "levels": []})
    other = dataclasses.replace(study, raw=raw)
    rows = list(descriptives_frame(memory_analyses, other)["Characteristic"])
    assert "Months in current therapy, M (SD)" in rows
    assert not [r for r in rows if r.startswith(("Age", "Gender"))]


# Zones of the store: a key or prefix starting with one of these is built by lacrima.catalog.
ZONE_KEY = re.compile(r"^(landing|raw|curated|quarantine|ledger|register|results|reports)/")


def test_every_storage_key_is_built_by_the_catalog():
    roots = [SRC, SRC.parents[1] / "flows"]
    found = [f"{p.name}:{line}: {word!r}" for root in roots for p in sorted(root.rglob("*.py"))
             if p.name != "catalog.py" for line, word in _code_words(p) if ZONE_KEY.search(word)]
    assert not found, "\n".join(found)
