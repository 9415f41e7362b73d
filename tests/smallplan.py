"""A sites root whose plan keeps one effect or a few of each kind of analysis.

The demo plan has 49 pooled effects, 18 mixed models and two scales' invariance fits: a
comparison and a report of it cost seconds whatever the sample size. Tests of lifecycle logic
(publishing, months of drops, a consortium's shape, what leaves the store) check how runs,
files and pointers behave, not the plan's size: they run on this plan, written from the real
one (the same variables, scores, sites and codebooks; fewer families).
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

from lacrima.study import PLAN_FILE, load_sites, load_study, sites_root

# Every kind of family stays (correlation, partial correlation, group comparison, contingency,
# regression), with its x list cut to its first entries; so does pooling, IPD and replication.
KEEP = {"H2": {}, "A1": {"x": 1, "covariate_sets": 1}, "A2": {}, "A3": {}, "A4": {}}
SECTION_FAMILIES = {"pooling": ["H2", "A1", "A2", "A3"], "ipd": ["H2"],
                    "replication": ["H2", "A1"]}
SCALES = '{ change = ["change"] }'


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_small_plan(out: Path, source: Path | None = None) -> Path:
    """Copy the sites root ``source`` to ``out`` with the plan cut down to :data:`KEEP`."""
    source = Path(source or sites_root())
    shutil.copytree(source, out)
    text = (source / PLAN_FILE).read_text(encoding="utf-8")
    families = tomllib.loads(text)["families"]
    blocks = []
    for fam in families:
        if fam["id"] not in KEEP:
            continue
        fam = {k: (v[:KEEP[fam["id"]][k]] if k in KEEP[fam["id"]] else v) for k, v in fam.items()}
        blocks.append("[[families]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in fam.items()))
    start, end = text.index("[[families]]"), text.index("\n[reliability]")
    text = text[:start] + "\n".join(blocks) + text[end:]
    for section, ids in SECTION_FAMILIES.items():
        text = _in_section(text, section, r"^families = \[.*\]$", f"families = {_toml(ids)}")
    text = _in_section(text, "invariance", r"^scales = \{.*\}$", f"scales = {SCALES}")
    (out / PLAN_FILE).write_text(text, encoding="utf-8")
    study = load_study(out)                      # the cut plan reads back as asked
    assert [f["id"] for f in study.families] == [f["id"] for f in families if f["id"] in KEEP]
    for section, ids in SECTION_FAMILIES.items():
        assert list(study.section(section)["families"]) == ids, section
    return out


def _in_section(text: str, section: str, pattern: str, new: str) -> str:
    head = text.index(f"\n[{section}]\n")
    nxt = re.search(r"^\[", text[head + 2:], flags=re.M)
    end = head + 2 + nxt.start() if nxt else len(text)
    body, n = re.subn(pattern, new, text[head:end], count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"[{section}] of the plan has no line matching {pattern}")
    return text[:head] + body + text[end:]


def small_plan(out: Path):
    """``(study, sites)`` of a small-plan copy of the sites root written to ``out``."""
    write_small_plan(out)
    return load_study(out), load_sites(out)
