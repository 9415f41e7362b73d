"""Validation of drops (protocol section 8) with a Great Expectations suite from the plan.

The canonical-schema suite is generated from ``sites/study.toml`` (``suite_dict``) and kept in
``expectations/canonical.json``; a test keeps the two in step. Checks that need more than one
drop (IDs clashing with accepted batches) or the scores (completion) are plain pandas.

The suite runs on the drop in long format (one row per participant x checked variable, see
``long_frame``), so that each rule shared by many variables (every 1-5 Likert range, every
episode item blank for non-criers) is one expectation instead of one per variable. Great
Expectations' cost is per expectation and per metric, not per row, so the suite runs on the
long form (``run_suite`` maps each unexpected long row back to its variable and spreadsheet
row). What remains is GX's fixed cost per call, so several drops are validated in one run
(``run_suite_many``). Importing Great Expectations is most of ``lacrima check``'s time, so it is
imported only when a readable drop reaches the suite, and its context is built once a process.
The measurements behind these choices: ``bench/notes.md``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from lacrima.findings import Finding, column_label, findings_frame
from lacrima.i18n import msg
from lacrima.scoring import score
from lacrima.study import Study

SUITE_NAME = "canonical"
EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"



@dataclass(frozen=True)
class _Rule:
    """One check of one variable, as a data manager reads it in a finding."""

    check: str
    variable: str
    expected: str
    kind: str                 # GX expectation type
    kwargs: tuple = ()        # (name, value) pairs besides column and row_condition
    condition: str = ""       # extra row condition, pandas query syntax


def _number(x) -> str:
    # Findings always showed bounds as floats (GX stores them so); keep the wording.
    return str(float(x))


def _rules(study: Study) -> list[_Rule]:
    """Every per-variable rule of protocol section 8, in the order findings are reported.

    ``ranged``: likert/integer variables with ``valid`` stay within it; ``category``: one of the
    levels; IDs present and unique; episode items (``group = "episode"``) blank when the criers
    variable is false; and the ``[validation] zero_for_non_criers`` counts 0 for non-criers.
    """
    criers = study.section("analysis")["criers"]
    non_crier = f"{criers} == False"
    rules = [
        _Rule("ids_present", "participant_id", "a participant ID on every row",
              "expect_column_values_to_not_be_null"),
        _Rule("unique_ids", "participant_id", "each participant ID once",
              "expect_column_values_to_be_unique"),
    ]
    for name, spec in study.variables.items():
        if spec["type"] in ("likert", "integer") and "valid" in spec:
            lo, hi = spec["valid"]
            rules.append(_Rule("value_range", name, f"values between {_number(lo)} and {_number(hi)}",
                               "expect_column_values_to_be_between",
                               (("min_value", lo), ("max_value", hi))))
        elif spec["type"] == "category":
            levels = list(spec["levels"])
            rules.append(_Rule("allowed_codes", name, "one of " + ", ".join(map(str, levels)),
                               "expect_column_values_to_be_in_set", (("value_set", levels),)))
        if spec.get("group") == "episode":
            rules.append(_Rule("episode_blank_for_non_criers", name,
                               f"blank when {criers} is False (episode items are asked of "
                               "criers only)", "expect_column_values_to_be_null",
                               condition=non_crier))
    for name in study.section("validation").get("zero_for_non_criers", ()):
        rules.append(_Rule("value_range", name, f"values between {_number(0)} and "
                           f"{_number(0)} when {non_crier}", "expect_column_values_to_be_between",
                           (("min_value", 0), ("max_value", 0)), condition=non_crier))
    return rules


def suite_dict(study: Study) -> dict:
    """The canonical suite as plain data (expectation type + kwargs + meta), derived from the plan.

    Parameters
    ----------
    study : Study
        The study plan; its variables, their ``valid`` ranges, ``levels`` and ``group``.

    Returns
    -------
    dict
        ``{"name": "canonical", "expectations": [...]}``. Each expectation is one rule shared by
        a list of variables and runs on the long frame (``long_frame``): its ``row_condition``
        selects those variables' rows, ``meta`` names the check, the wording of a finding and
        the variables, so a data manager can read each rule without the code.

    Notes
    -----
    Rules with the same check, wording and condition are grouped in plan order: every Likert
    item scored 1-5 shares one range expectation. Ranges and allowed codes ignore blanks, as
    Great Expectations' column-map expectations do.
    """
    groups: dict[tuple, list[_Rule]] = {}
    for rule in _rules(study):
        groups.setdefault((rule.check, rule.expected, rule.condition), []).append(rule)
    exps = []
    for (check, expected, condition), rules in groups.items():
        first = rules[0]
        names = [r.variable for r in rules]
        where = f"variable in {json.dumps(names)}" + (f" and {condition}" if condition else "")
        value = "value_num" if first.kind == "expect_column_values_to_be_between" else "value"
        exps.append({"type": first.kind,
                     "kwargs": {"column": value, **dict(first.kwargs), "row_condition": where,
                                "condition_parser": "pandas"},
                     "meta": {"check": check, "expected": expected, "variables": names}})
    return {"name": SUITE_NAME, "expectations": exps}


def write_suite(study: Study, folder: Path = EXPECTATIONS_DIR) -> Path:
    """Write the generated suite to ``expectations/canonical.json``."""
    path = folder / f"{SUITE_NAME}.json"
    path.write_text(json.dumps(suite_dict(study), indent=2) + "\n")
    return path


def long_frame(frame: pd.DataFrame, study: Study) -> pd.DataFrame:
    """The drop in long format: one row per participant x variable the suite checks.

    Parameters
    ----------
    frame : pandas.DataFrame
        A canonical drop (one row per participant, canonical column names); not changed.
    study : Study
        The study plan (which variables are checked, and the criers variable).

    Returns
    -------
    pandas.DataFrame
        Columns ``row`` (0-based position in ``frame``), ``variable`` (canonical name),
        ``value`` (the answer as a Python object, None when blank), ``value_num`` (the answer
        as float for likert/integer variables, else NaN) and the criers variable (that
        participant's answer, ``boolean``). Variable-major: all rows of one variable together.

    Raises
    ------
    ValueError
        When a likert or integer column holds something that is not a number.

    Notes
    -----
    A variable missing from ``frame`` counts as blank, as the drop reader fills it.
    """
    criers = study.section("analysis")["criers"]
    names = list(dict.fromkeys(r.variable for r in _rules(study)))
    n = len(frame)
    values, numbers = [], []
    for name in names:
        col = frame[name] if name in frame.columns else pd.Series([None] * n, dtype=object)
        obj = col.to_numpy(dtype=object, na_value=None)
        values.append(obj)
        if study.variables[name]["type"] in ("likert", "integer"):
            try:
                numbers.append(pd.to_numeric(col).to_numpy(dtype=float, na_value=np.nan))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"column {name!r} must hold numbers (canonical dtype Int64), "
                                 f"found dtype {col.dtype}: {exc}") from None
        else:
            numbers.append(np.full(n, np.nan))
    crier = (frame[criers] if criers in frame.columns else pd.Series([None] * n)).astype("boolean")
    return pd.DataFrame({
        "row": np.tile(np.arange(n), len(names)),
        "variable": pd.Series(np.repeat(names, n), dtype="str"),
        "value": pd.Series(np.concatenate(values) if names else [], dtype=object),
        "value_num": np.concatenate(numbers) if names else np.array([], dtype=float),
        criers: pd.array(np.tile(crier.to_numpy(dtype=object, na_value=None), len(names)),
                         dtype="boolean"),
    })


def _gx_suite(suite: dict):
    import great_expectations as gx   # ~3 s import: only where used

    out = gx.ExpectationSuite(name=suite["name"])
    for exp in suite["expectations"]:
        cls_name = "".join(p.title() for p in exp["type"].split("_"))
        out.add_expectation(getattr(gx.expectations, cls_name)(**exp["kwargs"], meta=exp["meta"]))
    return out


# GX keeps one process-wide project context: two threads validating at once through it
# mixed up their batches (a clean drop was quarantined at 125 sites on 4 threads). Only
# the GX call takes turns; reading, pseudonymising and writing a drop stay parallel.
# Building the context and the suite takes the lock too: ``functools.cache`` does not stop
# threads that miss together from each building one (4 intake groups starting at once on
# the thread runner built 4 contexts), so a process builds exactly one.
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

    @classmethod
    def from_dict(cls, d: dict) -> "ValidationReport":
        """The report ``to_dict`` wrote (a quarantine folder's ``report.json``)."""
        findings = tuple(Finding(check=f["check"], message=f["message"],
                                 columns=tuple(f.get("columns", ())),
                                 rows=tuple(f.get("rows", ())), expected=f.get("expected", ""),
                                 found=f.get("found", ""), severity=f.get("severity", "error"),
                                 fix=f.get("fix", "")) for f in d.get("findings", ()))
        return cls(site=d["site"], file_name=d["file"], sha256=d["sha256"],
                   n_rows=int(d.get("n_rows", 0)), findings=findings,
                   identifying_dropped=tuple(d.get("identifying_columns_dropped", ())),
                   plan_sha256=d.get("plan_sha256", ""),
                   codebook_sha256=d.get("codebook_sha256", ""))


def _native(codebook, canonical: str) -> str:
    try:
        return codebook.native_name(canonical)
    except (KeyError, AttributeError):
        return canonical


def run_suite(frame: pd.DataFrame, study: Study, row_numbers, codebook) -> list[Finding]:
    """Run the canonical GX suite on a canonical frame; one Finding per failed rule and variable.

    Parameters
    ----------
    frame : pandas.DataFrame
        The canonical drop; not changed.
    study : Study
        The study plan the suite is generated from.
    row_numbers : sequence of int
        Spreadsheet row number of each row of ``frame``, shown in findings.
    codebook : Codebook
        The site's codebook, for native column names in findings.

    Returns
    -------
    list of Finding
        In plan order (``_rules``): check, native column, the failing spreadsheet rows, the
        rule's wording as ``expected`` and the number of unexpected values as ``found``. No
        value of the drop appears in a finding.

    Notes
    -----
    The one-drop case of ``run_suite_many``.
    """
    return run_suite_many([frame], study, [row_numbers], [codebook])[0]


# Participant rows per GX call of ``run_suite_many``: its long frame has ~60 rows per
# participant, so this bounds one stacked frame to about 1.2 million rows.
MAX_ROWS_PER_CALL = 20_000


def run_suite_many(frames, study: Study, row_numbers_list, codebooks,
                   max_rows: int = MAX_ROWS_PER_CALL) -> list[list[Finding]]:
    """Run the canonical GX suite on several drops at once; for each drop, its own findings.

    Parameters
    ----------
    frames : sequence of pandas.DataFrame
        Canonical drops (of any sites); not changed.
    study : Study
        The study plan the suite is generated from.
    row_numbers_list : sequence of sequences of int
        For each drop, the spreadsheet row number of each of its rows.
    codebooks : sequence of Codebook
        For each drop, its site's codebook (native column names in findings).
    max_rows : int, optional
        Drops are stacked into one Great Expectations run until their rows would pass this
        many; a larger group is validated in several runs (memory stays bounded).

    Returns
    -------
    list of list of Finding
        For each drop, exactly what ``run_suite`` gives for it alone: in plan order
        (``_rules``), check, native column, failing spreadsheet rows, the rule's wording as
        ``expected`` and the number of unexpected values as ``found``. No value of a drop
        appears in a finding.

    Notes
    -----
    Great Expectations' cost is per call, per expectation and per metric, hardly per row:
    the drops' long frames (``long_frame``) are stacked with a ``drop`` column and validated
    together, and each unexpected long row is mapped back to its drop, variable and row.
    The one rule that spans rows, ``unique_ids``, must stay per drop (IDs may repeat across
    drops and sites): in the stacked frame a participant ID stands for the pair (drop, ID)
    (``_stacked_long``), so two IDs are equal only within one drop. Every other rule reads one long row at a time.
    A check that could not run (GX raised) or failed without naming rows cannot be pinned
    to a drop, so the drops of that run are then validated one by one.

    The suite runs twice at most per stacked run: pass/fail for every expectation
    (``BOOLEAN_ONLY``), then the failed ones alone with ``COMPLETE`` for their unexpected
    rows. Only the GX calls hold ``_GX_LOCK``. Stacking is about six times faster than
    one run per drop, with equal findings (``bench/notes.md``).
    """
    frames, row_numbers_list, codebooks = list(frames), list(row_numbers_list), list(codebooks)
    if not (len(frames) == len(row_numbers_list) == len(codebooks)):
        raise ValueError("run_suite_many needs one row_numbers and one codebook per frame")
    out: list[list[Finding]] = [[] for _ in frames]
    groups, group, rows = [], [], 0
    for i, frame in enumerate(frames):
        if group and rows + len(frame) > max_rows:
            groups.append(group)
            group, rows = [], 0
        group.append(i)
        rows += len(frame)
    if group:
        groups.append(group)
    for group in groups:
        found = _suite_run([frames[i] for i in group], study)
        if found is None:                     # not attributable to a drop: one run per drop
            found = [_suite_run([frames[i]], study)[0] for i in group]
        for i, failed in zip(group, found):
            out[i] = _findings(failed, study, row_numbers_list[i], codebooks[i], frames[i])
    return out


def _stacked_long(frames, study: Study) -> pd.DataFrame:
    """The drops' long frames one after another, with ``drop`` (position in ``frames``).

    A participant ID becomes a number unique to its (drop, ID) pair (``pandas.factorize``
    within the drop, then offset past the earlier drops' numbers): equal within a drop
    exactly when the IDs are equal, never equal across drops. A blank ID stays blank.
    """
    parts, offset = [], 0
    for k, frame in enumerate(frames):
        data = long_frame(frame.reset_index(drop=True), study)
        ids = (data["variable"] == "participant_id").to_numpy()
        value = data["value"].to_numpy(dtype=object).copy()
        present = ids & pd.notna(value)
        codes, uniques = pd.factorize(value[present])
        value[present] = (codes + offset).astype(object)
        offset += len(uniques)
        data["value"] = pd.Series(value, dtype=object)
        data.insert(0, "drop", k)
        parts.append(data)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _suite_run(frames, study: Study):
    """One GX run over the stacked drops: per drop, {(check, expected, variable): rows}.

    Returns None when a failed check cannot be pinned to its drop (GX raised, or named no
    rows) while more than one drop was stacked; for a single drop such a check maps to its
    message (``str``) for each of its variables.
    """
    suite = suite_dict(study)
    data = _stacked_long(frames, study)
    with _GX_LOCK:
        gx_suite = _suite_for(json.dumps(suite, sort_keys=True))
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": data})
        # Pass/fail first: listing unexpected rows costs GX several more metrics per
        # expectation, so only the failed ones (none, in most drops) are run again for them.
        result = batch.validate(gx_suite, result_format={"result_format": "BOOLEAN_ONLY"})
        by_rule = {(e.meta["check"], e.meta["expected"]): e for e in gx_suite.expectations}
        failures = [batch.validate(by_rule[(r.expectation_config.meta["check"],
                                            r.expectation_config.meta["expected"])],
                                   result_format={"result_format": "COMPLETE"})
                    for r in result.results if not r.success]
    drops = data["drop"].to_numpy()
    variables, positions = data["variable"].to_numpy(dtype=object), data["row"].to_numpy()
    failed: list[dict] = [{} for _ in frames]
    for r in failures:
        if r.success:             # cannot pass on the second run of the same batch; be safe
            continue
        meta = r.expectation_config.meta
        check, expected = meta["check"], meta["expected"]
        idx = [i for i in (r.result.get("unexpected_index_list") or []) if isinstance(i, int)]
        raised = r.exception_info.get("raised_exception") if r.exception_info else False
        if raised or not idx:
            if len(frames) > 1:
                return None
            message = (r.exception_info or {}).get("exception_message", "") if raised else \
                "Great Expectations reported a failure without rows"
            for name in meta["variables"]:
                failed[0][(check, expected, name)] = message
            continue
        for i in idx:
            failed[drops[i]].setdefault((check, expected, variables[i]), []).append(
                int(positions[i]))
    return failed


# Checks whose offending values may be shown: coded and numeric answers, never IDs or text.
_SHOWN_VALUES = ("value_range", "allowed_codes")


def _is_numeric(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() else str(float(v))


def _offending(frame: pd.DataFrame | None, variable: str, positions, limit: int = 5) -> str:
    """The distinct offending values of a coded or numeric column, as a data manager reads them."""
    if frame is None or variable not in frame.columns:
        return ""
    col = frame[variable].reset_index(drop=True)
    values = col.iloc[[i for i in sorted(positions) if i < len(col)]].dropna().unique().tolist()
    # Numbers only: a text value here could be anything a person typed.
    values = [_fmt(v) for v in values if _is_numeric(v)]
    if not values:
        return ""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def _labels_style(codebook) -> bool:
    """True when the site's files hold answer labels (the data manager never sees the codes)."""
    formats = getattr(codebook, "formats", ())
    return bool(formats) and formats[0].values == "labels"


def _answer(codebook, variable: str, value) -> str:
    """A canonical value as the site's file writes it: its label in a label column."""
    scale = codebook.scale_of(variable) if hasattr(codebook, "scale_of") else None
    if scale is not None and scale.has_value(value):
        return repr(scale.label_of(value))
    return {True: "'Yes'", False: "'No'"}.get(value, repr(str(value))) if isinstance(
        value, bool) else repr(str(value))


def _wording(rule: _Rule, study: Study, codebook) -> tuple:
    """What a rule expects and the advice, in the site's terms: native columns, answer labels
    in a label column (never the numeric codes behind them), whole numbers as whole numbers.
    Message ids (``lacrima.i18n.msg``), rendered in the site's language where shown."""
    kwargs = dict(rule.kwargs)
    scale = codebook.scale_of(rule.variable) if hasattr(codebook, "scale_of") else None
    criers = study.section("analysis")["criers"]
    crier_column = column_label(_native(codebook, criers), criers)
    no = _answer(codebook, criers, False)
    if rule.check == "ids_present":
        return msg("a participant ID on every row"), ""
    if rule.check == "unique_ids":
        return msg("each participant ID on one row only"), ""
    if rule.check == "episode_blank_for_non_criers":
        return msg("blank when {column} is {no} (episode items are asked of criers only)",
                   column=crier_column, no=no), ""
    if rule.check == "value_range" and rule.condition:
        return msg("{value} when {column} is {no}", value=_fmt(kwargs["min_value"]),
                   column=crier_column, no=no), ""
    if scale is not None and _labels_style(codebook):
        labels = ", ".join(dict.fromkeys(scale.labels))
        return (msg("one of the answers: {labels}", labels=labels),
                msg("correct these cells to one of the answers ({labels}) in your own tool, "
                    "and upload the corrected file", labels=labels))
    if rule.check == "value_range":
        return msg("whole numbers from {low} to {high}", low=_fmt(kwargs["min_value"]),
                   high=_fmt(kwargs["max_value"])), ""
    return msg("one of {values}", values=", ".join(map(str, kwargs.get("value_set", ())))), ""


def _findings(failed: dict, study: Study, row_numbers, codebook,
              frame: pd.DataFrame | None = None) -> list[Finding]:
    """The findings of one drop from its failed (check, expected, variable) -> rows or message.

    Coded and numeric checks (``_SHOWN_VALUES``) name the offending values; the other checks
    (IDs, episode items for non-criers) name rows only. The wording is the site's
    (``_wording``); the rule's own ``expected`` is the suite's key, not shown.
    """
    findings = []
    for rule in _rules(study):
        got = failed.get((rule.check, rule.expected, rule.variable))
        if got is None:
            continue
        native = _native(codebook, rule.variable)
        label = column_label(native, rule.variable)
        if isinstance(got, str):
            findings.append(Finding(rule.check, f"check could not run on column {label}: "
                                    f"{got[:200]}", columns=(native,)))
            continue
        rows = tuple(int(row_numbers[i]) for i in sorted(got) if i < len(row_numbers))
        values = _offending(frame, rule.variable, got) if rule.check in _SHOWN_VALUES else ""
        expected, fix = _wording(rule, study, codebook)
        k = len(rows) or len(got)
        if rule.check == "ids_present":
            message = msg("{n} row(s) have no participant ID in column {column}", n=k,
                          column=native)
            found = msg("missing participant ID on {n} row(s)", n=k)
        elif rule.check == "unique_ids":
            message = msg("{n} row(s) share their participant ID (column {column}) with "
                          "another row", n=k, column=native)
            found = msg("{n} row(s) with a repeated participant ID", n=k)
        elif fix:       # a label column: the answers, not the codes behind them
            message = (msg("{n} row(s) of column {column} hold an answer that is not on its "
                           "scale: {values}", n=k, column=label, values=values) if values else
                       msg("{n} row(s) of column {column} hold an answer that is not on its "
                           "scale", n=k, column=label))
            found = (msg("{n} answer(s) not on the scale: {values}", n=len(got), values=values)
                     if values else msg("{n} answer(s) not on the scale", n=len(got)))
        else:
            message = (msg("{n} row(s) of column {column} fail: {expected}; found {values}",
                           n=k, column=label, expected=expected, values=values) if values else
                       msg("{n} row(s) of column {column} fail: {expected}", n=k, column=label,
                           expected=expected))
            found = (msg("{n} value(s) that do not fit: {values}", n=len(got), values=values)
                     if values else msg("{n} value(s) that do not fit", n=len(got)))
        findings.append(Finding(check=rule.check, message=message, columns=(native,), rows=rows,
                                expected=expected, found=found, fix=fix))
    return findings


def completion(frame: pd.DataFrame, study: Study, codebook) -> list[Finding]:
    """Completion threshold: enough rows with every ``[validation] completion_scores`` scorable."""
    if frame.empty:
        return [Finding("completion", "the drop has no data rows", expected="at least one row",
                        found="0 rows")]
    share_min = float(study.section("validation").get("min_scorable_share", 0))
    names = tuple(study.section("validation").get("completion_scores", ()))
    if not names:
        return []
    scored = score(frame, study, names=names)
    ok = scored[list(names)].notna().all(axis=1)
    if ok.mean() >= share_min:
        return []
    return [Finding("completion",
                    msg("only {share} of rows have every completion score scorable ({scores})",
                        share=f"{ok.mean():.0%}", scores=", ".join(names)),
                    columns=tuple(_native(codebook, study.scores[c]["items"][0]) for c in names
                                  if study.scores.get(c, {}).get("items")),
                    expected=msg("at least {share} of rows scorable", share=f"{share_min:.0%}"),
                    found=msg("{n} of {total} rows scorable", n=int(ok.sum()), total=len(ok)))]


def validate_drop(drop, study: Study, codebook, site: str, file_name: str, sha256: str,
                  suite=None) -> ValidationReport:
    """Every check of protocol section 8 on one read drop (a ``lacrima.native.NativeDrop``).

    Parameters
    ----------
    drop : NativeDrop
        The read drop.
    study : Study
    codebook : Codebook
        The site's codebook (native column names in findings).
    site, file_name, sha256 : str
        Shown in the report.
    suite : sequence of Finding, optional
        The suite's findings for this drop when already computed in a batched run
        (``run_suite_many``, as intake does); else the suite runs here.

    Returns
    -------
    ValidationReport
    """
    findings = list(drop.findings)
    frame = drop.frame
    other_site = getattr(drop, "looks_like", "")     # another site's export: nothing to check
    if len(frame) and not other_site:
        found = (run_suite(frame, study, drop.row_numbers, codebook) if suite is None
                 else list(suite))
        id_column = getattr(codebook, "id_column", None)
        if any(f.check == "missing_columns" and id_column in f.columns for f in findings):
            # no ID column at all: said once, not as a missing ID on every row
            found = [f for f in found if f.check != "ids_present"]
        findings += found
    findings += [] if other_site else completion(frame, study, codebook)
    return ValidationReport(site=site, file_name=file_name, sha256=sha256, n_rows=len(frame),
                            findings=tuple(findings),
                            identifying_dropped=tuple(drop.identifying_dropped),
                            plan_sha256=study.sha256,
                            codebook_sha256=getattr(codebook, "sha256", ""))
