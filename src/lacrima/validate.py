"""Validation of one drop (protocol section 8) with a Great Expectations suite from the plan.

The canonical-schema suite is generated from ``sites/study.toml`` (``build_suite``) and kept in
``expectations/canonical.json``; a test keeps the two in step. Checks that need more than one
drop (IDs clashing with accepted batches) or the scores (completion) are plain pandas.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pandas as pd

from lacrima.findings import Finding, findings_frame
from lacrima.scoring import score
from lacrima.study import Study

SUITE_NAME = "canonical"
EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"

# Human wording of each GX expectation type, for data managers.
_CHECK_NAMES = {
    "expect_column_values_to_be_between": "value_range",
    "expect_column_values_to_be_in_set": "allowed_codes",
    "expect_column_values_to_be_unique": "unique_ids",
    "expect_column_values_to_not_be_null": "ids_present",
    "expect_column_values_to_be_null": "episode_blank_for_non_criers",
}


def suite_dict(study: Study) -> dict:
    """The canonical suite as plain data (expectation type + kwargs), derived from the plan.

    One expectation per rule: ranges for likert/integer variables, allowed sets for categories,
    non-null and unique IDs, episode items blank when ``cried_in_therapy`` is false, and
    ``cry_sessions`` 0 for non-criers.
    """
    criers = study.section("analysis")["criers"]
    non_crier = f"{criers} == False"
    exps = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "participant_id"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "participant_id"}},
    ]
    for name, spec in study.variables.items():
        if spec["type"] in ("likert", "integer") and "valid" in spec:
            lo, hi = spec["valid"]
            exps.append({"type": "expect_column_values_to_be_between",
                         "kwargs": {"column": name, "min_value": lo, "max_value": hi}})
        elif spec["type"] == "category":
            exps.append({"type": "expect_column_values_to_be_in_set",
                         "kwargs": {"column": name, "value_set": list(spec["levels"])}})
        if spec.get("group") == "episode":
            exps.append({"type": "expect_column_values_to_be_null",
                         "kwargs": {"column": name, "row_condition": non_crier,
                                    "condition_parser": "pandas"}})
    exps.append({"type": "expect_column_values_to_be_between",
                 "kwargs": {"column": "cry_sessions", "min_value": 0, "max_value": 0,
                            "row_condition": non_crier, "condition_parser": "pandas"}})
    return {"name": SUITE_NAME, "expectations": exps}


def write_suite(study: Study, folder: Path = EXPECTATIONS_DIR) -> Path:
    """Write the generated suite to ``expectations/canonical.json``."""
    path = folder / f"{SUITE_NAME}.json"
    path.write_text(json.dumps(suite_dict(study), indent=2) + "\n")
    return path


def _gx_suite(suite: dict):
    import great_expectations as gx   # ~3 s import: only where used

    out = gx.ExpectationSuite(name=suite["name"])
    for exp in suite["expectations"]:
        cls_name = "".join(p.title() for p in exp["type"].split("_"))
        out.add_expectation(getattr(gx.expectations, cls_name)(**exp["kwargs"]))
    return out


# GX keeps one process-wide project context: two threads validating at once through it
# mixed up their batches (a clean drop was quarantined at 125 sites on 4 threads). Only
# the GX call takes turns; reading, pseudonymising and writing a drop stay parallel.
_GX_LOCK = threading.RLock()


@cache
def _batch_definition():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = ctx.data_sources.add_pandas("lacrima").add_dataframe_asset("drop")
    return asset.add_batch_definition_whole_dataframe("whole")


@cache
def _suite_for(suite_json: str):
    _batch_definition()          # GX builds suites only inside an active context
    return _gx_suite(json.loads(suite_json))


@dataclass(frozen=True)
class ValidationReport:
    """Result of validating one drop: every finding, and whether the drop is accepted."""

    site: str
    file_name: str
    sha256: str
    n_rows: int
    findings: tuple[Finding, ...]
    identifying_dropped: tuple[str, ...] = ()
    plan_sha256: str = ""
    codebook_sha256: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def valid(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    def to_dict(self) -> dict:
        return {
            "site": self.site, "file": self.file_name, "sha256": self.sha256,
            "n_rows": self.n_rows, "valid": self.valid,
            "identifying_columns_dropped": list(self.identifying_dropped),
            "plan_sha256": self.plan_sha256, "codebook_sha256": self.codebook_sha256,
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_frame(self) -> pd.DataFrame:
        return findings_frame(self.findings)


def _native(codebook, canonical: str) -> str:
    try:
        return codebook.native_name(canonical)
    except (KeyError, AttributeError):
        return canonical


def run_suite(frame: pd.DataFrame, study: Study, row_numbers, codebook) -> list[Finding]:
    """Run the canonical GX suite on a canonical frame; one Finding per failed expectation."""
    suite = suite_dict(study)
    gx_suite = _suite_for(json.dumps(suite, sort_keys=True))
    data = frame.reset_index(drop=True)
    with _GX_LOCK:
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": data})
        result = batch.validate(gx_suite, result_format={"result_format": "COMPLETE"})
    findings = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        column = cfg.kwargs.get("column", "")
        check = _CHECK_NAMES.get(cfg.type, cfg.type)
        raised = r.exception_info.get("raised_exception") if r.exception_info else False
        if raised:
            findings.append(Finding(check, f"check could not run on column {_native(codebook, column)}: "
                                    f"{r.exception_info.get('exception_message', '')[:200]}",
                                    columns=(_native(codebook, column),)))
            continue
        idx = r.result.get("unexpected_index_list") or []
        rows = tuple(int(row_numbers[i]) for i in idx if isinstance(i, int) and i < len(row_numbers))
        expected = _expected_text(cfg.type, cfg.kwargs)
        native = _native(codebook, column)
        findings.append(Finding(
            check=check,
            message=f"{len(rows) or r.result.get('unexpected_count', 0)} row(s) of column {native} "
                    f"fail: {expected}",
            columns=(native,), rows=rows, expected=expected,
            found=f"{r.result.get('unexpected_count', len(rows))} unexpected value(s)"))
    return findings


def _expected_text(kind: str, kw: dict) -> str:
    cond = f" when {kw['row_condition']}" if kw.get("row_condition") else ""
    if kind == "expect_column_values_to_be_between":
        return f"values between {kw['min_value']} and {kw['max_value']}{cond}"
    if kind == "expect_column_values_to_be_in_set":
        return "one of " + ", ".join(map(str, kw["value_set"]))
    if kind == "expect_column_values_to_be_unique":
        return "each participant ID once"
    if kind == "expect_column_values_to_not_be_null":
        return "a participant ID on every row"
    if kind == "expect_column_values_to_be_null":
        return f"blank{cond.replace('==', 'is')} (episode items are asked of criers only)"
    return kind


def id_clashes(frame: pd.DataFrame, accepted: pd.DataFrame, row_numbers, codebook,
               compare: list[str]) -> list[Finding]:
    """IDs already accepted for this site whose answers differ: a data error (section 5).

    The same ID with identical answers is a re-sent record and is not an error.
    ``frame`` and ``accepted`` carry pseudonymised IDs, so no raw ID is compared or shown.
    """
    if accepted is None or accepted.empty:
        return []
    cols = [c for c in compare if c in frame.columns and c in accepted.columns]
    merged = frame.reset_index(drop=True).reset_index().merge(
        accepted[["participant_id", *cols]], on="participant_id", suffixes=("", "__acc"))
    if merged.empty:
        return []
    differ = pd.Series(False, index=merged.index)
    for c in cols:
        a, b = merged[c].astype(str), merged[f"{c}__acc"].astype(str)
        differ |= a != b
    bad = merged.loc[differ, "index"].tolist()
    if not bad:
        return []
    rows = tuple(int(row_numbers[i]) for i in bad)
    return [Finding("id_clash", f"{len(rows)} participant ID(s) were already accepted for this site "
                    "with different answers; send a correction with `lacrima upload --replaces BATCH`",
                    columns=(_native(codebook, "participant_id"),), rows=rows,
                    expected="new IDs, or identical answers for a re-sent record",
                    found=f"{len(rows)} clashing ID(s)")]


def completion(frame: pd.DataFrame, study: Study, codebook) -> list[Finding]:
    """Completion threshold: enough rows with alliance and change scorable."""
    if frame.empty:
        return [Finding("completion", "the drop has no data rows", expected="at least one row",
                        found="0 rows")]
    share_min = float(study.section("validation").get("min_scorable_share", 0))
    scored = score(frame, study)
    ok = scored[["alliance", "change"]].notna().all(axis=1)
    if ok.mean() >= share_min:
        return []
    return [Finding("completion",
                    f"only {ok.mean():.0%} of rows have a scorable alliance and change score",
                    columns=tuple(_native(codebook, c) for c in ("wai_01", "ctsc_01")),
                    expected=f"at least {share_min:.0%} of rows scorable",
                    found=f"{int(ok.sum())} of {len(ok)} rows scorable")]


def validate_drop(drop, study: Study, codebook, site: str, file_name: str, sha256: str,
                  accepted: pd.DataFrame | None = None) -> ValidationReport:
    """Every check of protocol section 8 on one read drop (a ``lacrima.native.NativeDrop``).

    ``drop.frame`` must already carry pseudonymised IDs when ``accepted`` is given.
    """
    findings = list(drop.findings)
    frame = drop.frame
    if len(frame):
        findings += run_suite(frame, study, drop.row_numbers, codebook)
        compare = [c for c in study.variables if c not in ("participant_id",)]
        findings += id_clashes(frame, accepted, drop.row_numbers, codebook, compare)
    findings += completion(frame, study, codebook)
    return ValidationReport(site=site, file_name=file_name, sha256=sha256, n_rows=len(frame),
                            findings=tuple(findings),
                            identifying_dropped=tuple(drop.identifying_dropped),
                            plan_sha256=study.sha256,
                            codebook_sha256=getattr(codebook, "sha256", ""))
