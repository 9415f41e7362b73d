"""The plan and the sites as a checked contract: schemas, cross-references, one line per problem.

``check_sites(root)`` reads ``study.toml`` and every ``<code>/site.toml`` and codebook under
``root`` and returns every problem found (it does not stop at the first). Each
:class:`Problem` names the file, the key path, the value found and what was expected, and
prints as one line. ``lacrima sites check`` prints them; ``run``, ``demo`` and ``serve`` refuse
to start while any remain.

The schemas are pydantic models (``extra="forbid"``, strict types); they are also the typed
views of the files (:func:`plan_model`). ``Study.raw`` stays the dictionary the rest of the
code reads; moving every reader to the typed views is a later refactor.

Kept light on purpose: this module imports pydantic and the standard library only (no pandas,
Great Expectations or Prefect), so a broken configuration is refused in well under a second.
"""

from __future__ import annotations

import codecs
import datetime
import difflib
import re
import tomllib
import typing
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lacrima.study import PLAN_FILE, ROLES, SITE_FILE, sites_root


VERDICT_CONDITIONS = ("same_direction", "significant", "in_pi", "opposite_significant", "not_in_pi",
                      "original_significant", "larger_same_direction")
"""Conditions a verdict rule may combine (``lacrima.replication._conditions`` computes them)."""

SYNTH_KINDS = ("blank", "start_datetime", "end_datetime", "duration", "ip", "latitude", "longitude")
"""How ``synth`` fakes an extra column; ``constant:VALUE`` is also accepted."""

Number = Union[int, float]
Scalar = Union[bool, int, float, str]
Names = list[str]


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where (file and key path), what was found, what was expected."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigurationError(ValueError):
    """The plan or a site folder breaks the contract; ``problems`` lists every problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- the plan


class StudyMeta(_Model):
    name: str
    level: Annotated[float, Field(gt=0, lt=1)]
    seed: Annotated[int, Field(ge=0)]


class Variable(_Model):
    type: Literal["string", "date", "bool", "integer", "likert", "category"]
    label: str
    valid: Optional[Annotated[list[Number], Field(min_length=2, max_length=2)]] = None
    group: Optional[str] = None
    levels: Optional[Annotated[list[str], Field(min_length=1)]] = None


class MeanScore(_Model):
    kind: Literal["mean"]
    items: Annotated[Names, Field(min_length=1)]
    min_present: Annotated[int, Field(ge=1)]
    label: str
    reliability: bool = False


class LinearScore(_Model):
    kind: Literal["linear"]
    plus: Names
    minus: Names = []
    label: str


class NotEqualScore(_Model):
    kind: Literal["not_equal"]
    variable: str
    value: Scalar
    label: str


Score = Annotated[Union[MeanScore, LinearScore, NotEqualScore], Field(discriminator="kind")]


class NotTrueRule(_Model):
    reason: str
    label: str
    rule: Literal["not_true"]
    variable: str


class BelowRule(_Model):
    reason: str
    label: str
    rule: Literal["below"]
    variable: str
    value: Number


class MissingAnyRule(_Model):
    reason: str
    label: str
    rule: Literal["missing_any"]
    variables: Annotated[Names, Field(min_length=1)]


Exclusion = Annotated[Union[NotTrueRule, BelowRule, MissingAnyRule], Field(discriminator="rule")]


class Analysis(_Model):
    robustness_correlation: Literal["spearman"] = "spearman"
    p_adjust: Literal["holm", "bonferroni", "fdr_bh", "none"] = "holm"
    criers: str


class _Family(_Model):
    id: str
    label: str
    subset: Optional[Literal["criers"]] = None


class Correlation(_Family):
    kind: Literal["correlation"]
    x: Annotated[Names, Field(min_length=1)]
    y: Annotated[Names, Field(min_length=1)]


class PartialCorrelation(_Family):
    kind: Literal["partial_correlation"]
    x: Annotated[Names, Field(min_length=1)]
    y: Annotated[Names, Field(min_length=1)]
    covariate_sets: Annotated[list[Annotated[Names, Field(min_length=1)]], Field(min_length=1)]


class GroupComparison(_Family):
    kind: Literal["group_comparison"]
    outcome: str
    group: str


class Contingency(_Family):
    kind: Literal["contingency"]
    row: str
    row_levels: Annotated[list[str], Field(min_length=2, max_length=2)]
    column: str


class Regression(_Family):
    kind: Literal["regression"]
    y: str
    x: Annotated[Names, Field(min_length=1)]
    cov_type: Literal["HC3"] = "HC3"


Family = Annotated[Union[Correlation, PartialCorrelation, GroupComparison, Contingency, Regression],
                   Field(discriminator="kind")]


class Reliability(_Model):
    scores: Names
    ci: Literal["feldt"] = "feldt"


class Pooling(_Model):
    method: Literal["REML", "DL", "PM"] = "REML"
    ci: Literal["knha", "knha_adhoc", "z"] = "knha"
    families: Names


class Ipd(_Model):
    families: Names
    mixed_model: bool = True


Conditions = Annotated[list[Literal[VERDICT_CONDITIONS]],  # type: ignore[valid-type]
                       Field(min_length=1)]


class Verdict(_Model):
    verdict: str
    all: Optional[Conditions] = None
    any: Optional[Conditions] = None


class Replication(_Model):
    replication_site_role: Literal[ROLES] = "replication"  # type: ignore[valid-type]
    original_site_role: Literal[ROLES] = "original"  # type: ignore[valid-type]
    alpha: Annotated[float, Field(gt=0, lt=1)]
    pi_level: Annotated[float, Field(gt=0, lt=1)]
    small_telescope_power: Annotated[float, Field(gt=0, lt=1)]
    sceptical_level: Union[Literal["golden", "liberal", "controlled"],
                           Annotated[float, Field(gt=0, lt=1)]]
    verdict_p: Literal["raw", "holm"] = "raw"
    # How a side that pools several sites of one role is pooled (lacrima.replication):
    # "re" the [pooling] random-effects model, "fe" fixed effect, "auto" fixed effect for
    # at most replication.SMALL_K sites and random effects above.
    pooled_side: Literal["re", "fe", "auto"] = "auto"
    families: Names
    verdicts: Annotated[list[Verdict], Field(min_length=1)]


class ItemModel(_Model):
    """``[synthetic.items]``: loadings of each scale's items, subscale factors and their r."""

    loading: dict[str, Annotated[float, Field(gt=0, lt=1)]] = {}
    subscales: dict[str, Names] = {}
    subscale_r: dict[str, Annotated[float, Field(gt=0, le=1)]] = {}


class NonInvariance(_Model):
    site: str
    item: str
    intercept_shift: Number


class Invariance(_Model):
    scales: dict[str, Annotated[Names, Field(min_length=1)]]
    labels: dict[str, str] = {}         # scale -> its name in the report, e.g. the instrument
    alpha: Annotated[float, Field(ge=0, lt=1)] = 0.05
    delta_cfi: Number = -0.01
    delta_rmsea: Number = 0.015
    max_freed: Annotated[int, Field(ge=0)] = 3
    max_sites: Annotated[int, Field(ge=2)] = 12


class Synthetic(_Model):
    """The synthetic model; in a site's ``[synthetic]`` every key is an optional override."""

    cried_share: Optional[dict[str, Annotated[float, Field(ge=0, le=1)]]] = None
    gender_share: Optional[dict[str, Annotated[float, Field(ge=0, le=1)]]] = None
    age_mean: Optional[Number] = None
    age_sd: Optional[Annotated[float, Field(gt=0)]] = None
    criers_minus_noncriers_change_d: Optional[Number] = None
    alliance_change_r: Optional[Annotated[float, Field(gt=-1, lt=1)]] = None
    r_change: Optional[dict[str, Annotated[float, Field(gt=-1, lt=1)]]] = None
    r_alliance: Optional[dict[str, Annotated[float, Field(gt=-1, lt=1)]]] = None
    r_security: Optional[dict[str, Annotated[float, Field(gt=-1, lt=1)]]] = None
    items: Optional[ItemModel] = None
    intercepts: Optional[dict[str, Number]] = None
    noninvariance: Optional[Union[NonInvariance, Annotated[dict, Field(max_length=0)]]] = None


class Descriptives(_Model):
    """``[descriptives]``: the participants table's rows besides N, criers and scores."""

    mean_sd: Names = []       # numeric variables shown as M (SD)
    levels: Names = []        # categorical variables shown as n (%) per level


class Validation(_Model):
    min_scorable_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    completion_scores: Names = []
    zero_for_non_criers: Names = []
    max_file_mb: Annotated[float, Field(gt=0)] = 200.0


class Plan(_Model):
    """Typed view of ``study.toml``."""

    study: StudyMeta
    variables: Annotated[dict[str, Variable], Field(min_length=1)]
    scores: dict[str, Score]
    exclusions: list[Exclusion] = []
    analysis: Analysis
    families: list[Family]
    reliability: Optional[Reliability] = None
    pooling: Pooling
    ipd: Optional[Ipd] = None
    invariance: Optional[Invariance] = None
    replication: Replication
    synthetic: Synthetic
    validation: Validation = Validation()
    descriptives: Descriptives = Descriptives()


# --------------------------------------------------------------------------- a site


_EMAIL = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class SiteContact(_Model):
    """``[site.contact]``: who hears of the site's quarantined drops (flows/notify.py)."""

    webhook: Optional[Annotated[str, Field(pattern=r"^https?://\S+$")]] = None
    email: Union[_EMAIL, list[_EMAIL]] = []


class SiteMeta(_Model):
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    country: str
    language: str
    role: Literal[ROLES]  # type: ignore[valid-type]
    reference: str = ""
    published_n: Annotated[int, Field(ge=1)]
    codebook: str = "codebook.toml"
    contact: Optional[SiteContact] = None


class SiteFile(_Model):
    """Typed view of ``sites/<code>/site.toml``."""

    site: SiteMeta
    synthetic: Synthetic = Synthetic()


class CodebookHead(_Model):
    site: str
    language: str = ""
    id_column: str
    identifying_columns: Names = []
    file_order: Names = []
    id_pattern: Optional[str] = None


class Format(_Model):
    kind: Literal["qualtrics_csv", "csv", "xlsx", "sav", "redcap_csv"]
    extensions: Annotated[list[Annotated[str, Field(pattern=r"^\.[A-Za-z0-9]+$")]],
                          Field(min_length=1)]
    encodings: Annotated[list[str], Field(min_length=1)] = ["utf-8-sig"]
    write_encoding: Optional[str] = None
    delimiter: Literal[",", ";", "\t", "|"] = ","
    decimal: Literal[".", ","] = "."
    header_rows: Annotated[int, Field(ge=0, le=10)] = 1
    date_format: Annotated[str, Field(pattern="%")] = "%Y-%m-%d"
    values: Literal["labels", "codes"] = "labels"
    sheet: str = ""


class Ids(_Model):
    kind: Literal["random", "sequence"]
    prefix: str = ""
    length: Annotated[int, Field(ge=4, le=64)] = 15
    template: str = "{n}"


class ScaleSpec(_Model):
    values: Annotated[list[Scalar], Field(min_length=1)]
    labels: Annotated[list[str], Field(min_length=1)]
    native_codes: Optional[list[Scalar]] = None
    missing_codes: list[Number] = []


class ColumnSpec(_Model):
    column: Annotated[str, Field(min_length=1)]
    scale: str = ""
    text: str = ""
    import_id: str = ""
    missing_codes: list[Number] = []
    numeric: bool = False


class ExtraColumnSpec(_Model):
    column: Annotated[str, Field(min_length=1)]
    text: str = ""
    import_id: str = ""
    synth: Union[Literal[SYNTH_KINDS],  # type: ignore[valid-type]
                 Annotated[str, Field(pattern=r"^constant:")]] = "blank"


class UnknownLabel(_Model):
    column: str
    value: Scalar


class CodebookSynthetic(_Model):
    mess_identifying_column: Optional[str] = None
    mess_unknown_label: Optional[UnknownLabel] = None


class CodebookFile(_Model):
    """Typed view of ``sites/<code>/codebook.toml``."""

    codebook: CodebookHead
    formats: Annotated[list[Format], Field(min_length=1)]
    ids: Optional[Ids] = None
    scales: dict[str, ScaleSpec] = {}
    columns: dict[str, ColumnSpec]
    extra_columns: list[ExtraColumnSpec] = []
    synthetic: CodebookSynthetic = CodebookSynthetic()


# --------------------------------------------------------------------------- reading


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk(model: type, loc: tuple) -> tuple[tuple, list[str]]:
    """The key path a person types for pydantic's ``loc``, and the keys allowed at its end.

    pydantic puts a discriminated union's tag (``"mean"``) and the member tried in a plain
    union (``"float"``) into the location; neither is a key in the file.
    """
    ann: Any = model
    parts, clean = list(loc), []
    while parts:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
            continue
        if origin is Union:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) == 1:
                ann = args[0]
                continue
            tag = parts.pop(0)
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            chosen = [m for m in models if any(
                tag in typing.get_args(f.annotation) for f in m.model_fields.values()
                if typing.get_origin(f.annotation) is Literal)]
            ann = chosen[0] if chosen else None
            continue
        if origin in (list, dict):
            clean.append(parts.pop(0))
            ann = typing.get_args(ann)[-1]
            continue
        part = parts.pop(0)
        clean.append(part)
        fields = ann.model_fields if isinstance(ann, type) and issubclass(ann, BaseModel) else {}
        ann = fields[part].annotation if part in fields else None
    while typing.get_origin(ann) in (Annotated, Union):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    allowed = list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []
    return tuple(clean), allowed


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word`` (difflib), else ``''``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _todos(raw: Any, file: str, loc: tuple = ()) -> list[Problem]:
    """Values a draft (``lacrima sites new``) left as ``"TODO: ..."`` for a person to fill."""
    if isinstance(raw, dict):
        return [p for k, v in raw.items() for p in _todos(v, file, (*loc, k))]
    if isinstance(raw, list):
        todo = [v for v in raw if isinstance(v, str) and v.startswith("TODO")]
        if todo:    # one line for a list of TODOs (a draft scale's values)
            return [Problem(file, _key(loc), f"left to a person: {todo[0]} ({len(todo)} of "
                            f"{len(raw)} entries)")]
        return [p for i, v in enumerate(raw) for p in _todos(v, file, (*loc, i))]
    if isinstance(raw, str) and raw.startswith("TODO"):
        return [Problem(file, _key(loc), f"left to a person: {raw}")]
    return []


def _schema_problems(model: type[BaseModel], raw: dict, file: str) -> tuple[Any, list[Problem]]:
    todos = _todos(raw, file)
    try:
        return model.model_validate(raw), todos
    except ValidationError as err:
        problems = list(todos)
        todo_keys = {p.key for p in todos}
        errors = err.errors(include_url=False)
        # A misspelt key is one problem, not also a missing one: drop "missing" for a key
        # that an unknown key's did-you-mean names.
        for e in errors:
            if e["type"] == "extra_forbidden":
                clean, allowed = _walk(model, tuple(e["loc"])[:-1])
                close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1, cutoff=0.6)
                todo_keys.update(_key((*clean, c)) for c in close)
        for e in errors:
            if e["type"] == "missing" and _key(_walk(model, tuple(e["loc"]))[0]) in todo_keys:
                continue
            loc = tuple(e["loc"])
            key = _key(_walk(model, loc)[0])
            if key in todo_keys and e["type"] != "extra_forbidden":
                continue
            if e["type"] == "extra_forbidden":
                allowed = _walk(model, loc[:-1])[1]
                msg = (f"unknown key{did_you_mean(loc[-1], allowed)}; expected one of "
                       f"{', '.join(allowed)}" if allowed else "unknown key")
                problems.append(Problem(file, key, msg))
            elif e["type"] == "missing":
                problems.append(Problem(file, key, "missing required key"))
            else:
                table = isinstance(e.get("input"), (dict, list))
                found = "" if table else f"; found {_shown(e['input'])}"
                problems.append(Problem(file, key, f"{e['msg']}{found}"))
        return None, _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.file, p.key) in seen:     # one line per key (a plain union reports each member)
            continue
        seen.add((p.file, p.key))
        out.append(p)
    return out


def _read_toml(path: Path, shown: str) -> tuple[dict | None, list[Problem]]:
    if not path.is_file():
        return None, [Problem(shown, "", "file is missing")]
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh), []
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem(shown, "", f"not valid TOML ({exc})")]
    except UnicodeDecodeError:
        return None, [Problem(shown, "", "not UTF-8 text; save the file as UTF-8")]


# --------------------------------------------------------------------------- cross-references


def _plan_references(plan: Any, file: str) -> list[Problem]:
    """Cross-references of the plan; a section that failed its schema (None) is skipped."""
    out: list[Problem] = []

    def have(*names: str) -> bool:
        return all(getattr(plan, n) is not None for n in names)

    def ref(key: str, name: str, pool, what: str) -> None:
        if name not in pool:
            out.append(Problem(file, key, f"{name!r} is not a {what}{did_you_mean(name, pool)}"))

    variables = plan.variables if have("variables") else {}
    scores = plan.scores if have("scores") else {}
    known = set(variables) | set(scores)
    for name, v in variables.items():
        if v is None:           # an entry that failed its schema (reported there)
            continue
        if v.type == "category" and not v.levels:
            out.append(Problem(file, f"variables.{name}.levels",
                               "a category variable needs levels"))
        if v.levels and v.type != "category":
            out.append(Problem(file, f"variables.{name}.levels",
                               f"levels given for a {v.type} variable"))
        if v.valid and v.valid[0] > v.valid[1]:
            out.append(Problem(file, f"variables.{name}.valid", f"{v.valid} is not [min, max]"))
    for name, s in scores.items():
        if s is None:
            continue
        if name in variables:
            out.append(Problem(file, f"scores.{name}", "a score may not share a variable's name"))
        if isinstance(s, MeanScore) and s.min_present > len(s.items):
            out.append(Problem(file, f"scores.{name}.min_present",
                               f"{s.min_present} is more than the {len(s.items)} items"))
        if not have("variables"):
            continue
        if isinstance(s, MeanScore):
            for i, item in enumerate(s.items):
                ref(f"scores.{name}.items[{i}]", item, variables, "variable of the plan")
        elif isinstance(s, LinearScore):
            for side in ("plus", "minus"):
                for i, item in enumerate(getattr(s, side)):
                    ref(f"scores.{name}.{side}[{i}]", item, variables, "variable of the plan")
        else:
            ref(f"scores.{name}.variable", s.variable, variables, "variable of the plan")
    refs_ok = have("variables", "scores")
    for i, rule in enumerate(plan.exclusions or () if refs_ok else ()):
        names = rule.variables if isinstance(rule, MissingAnyRule) else [rule.variable]
        for name in names:
            ref(f"exclusions[{i}]", name, known, "variable or score of the plan")
    if have("analysis", "variables"):
        crier = variables.get(plan.analysis.criers)
        if plan.analysis.criers not in variables or crier is not None and crier.type != "bool":
            out.append(Problem(file, "analysis.criers",
                               f"{plan.analysis.criers!r} is not a bool variable of the plan"
                               f"{did_you_mean(plan.analysis.criers, variables)}"))
    families = plan.families if have("families") else []
    ids = [f.id for f in families]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        out.append(Problem(file, "families", f"family id {dup!r} is used twice"))
    for i, fam in enumerate(families if refs_ok else ()):
        where = f"families[{i}] ({fam.id})"
        for key in ("x", "y", "outcome", "group", "row", "column"):
            value = getattr(fam, key, None)
            for name in ([value] if isinstance(value, str) else value or ()):
                ref(f"{where}.{key}", name, known, "variable or score of the plan")
        for sets in getattr(fam, "covariate_sets", ()):
            for name in sets:
                ref(f"{where}.covariate_sets", name, known, "variable or score of the plan")
        if isinstance(fam, Contingency) and variables.get(fam.row) is not None:
            levels = variables[fam.row].levels or []
            for lev in fam.row_levels:
                ref(f"{where}.row_levels", lev, levels, f"level of {fam.row}")
    if have("reliability", "scores"):
        for i, name in enumerate(plan.reliability.scores):
            if name in scores and scores[name] is None:
                continue
            if not isinstance(scores.get(name), MeanScore):
                out.append(Problem(file, f"reliability.scores[{i}]", f"{name!r} is not a mean "
                                   f"score of the plan{did_you_mean(name, scores)}"))
    if have("families"):
        for section in ("pooling", "replication", "ipd"):
            for i, fid in enumerate(getattr(plan, section).families if have(section) else ()):
                ref(f"{section}.families[{i}]", fid, ids, "family id of the plan")
        by_id = {f.id: f for f in families}
        for i, fid in enumerate(plan.ipd.families if have("ipd") else ()):
            if fid in by_id and not isinstance(by_id[fid], Correlation):
                out.append(Problem(file, f"ipd.families[{i}]", f"{fid!r} is a {by_id[fid].kind} "
                                   "family; IPD models take correlation families"))
    if have("replication"):
        for i, v in enumerate(plan.replication.verdicts):
            if not v.all and not v.any:
                out.append(Problem(file, f"replication.verdicts[{i}]",
                                   "a verdict rule needs 'all' or 'any' conditions; expected "
                                   "some of " + ", ".join(VERDICT_CONDITIONS)))
        if plan.replication.original_site_role == plan.replication.replication_site_role:
            out.append(Problem(file, "replication",
                               "original_site_role and replication_site_role are the same"))
    if have("invariance", "scores"):
        for name, subs in plan.invariance.scales.items():
            for sub in (name, *subs):
                if not isinstance(scores.get(sub), MeanScore):
                    out.append(Problem(file, f"invariance.scales.{name}", f"{sub!r} is not a "
                                       f"mean score of the plan{did_you_mean(sub, scores)}"))
    if have("invariance"):
        for name in plan.invariance.labels:
            if name not in plan.invariance.scales:
                out.append(Problem(file, f"invariance.labels.{name}", f"{name!r} is not a scale "
                                   f"of [invariance] scales{did_you_mean(name, plan.invariance.scales)}"))
    if have("descriptives", "variables"):
        for key in ("mean_sd", "levels"):
            for i, name in enumerate(getattr(plan.descriptives, key)):
                ref(f"descriptives.{key}[{i}]", name, variables, "variable of the plan")
    if have("validation") and refs_ok:
        for key in ("completion_scores", "zero_for_non_criers"):
            for i, name in enumerate(getattr(plan.validation, key)):
                of_scores = key == "completion_scores"
                ref(f"validation.{key}[{i}]", name, scores if of_scores else variables,
                    "score of the plan" if of_scores else "variable of the plan")
    if have("synthetic", "variables"):
        out += _synthetic_references(plan.synthetic, plan, file, "synthetic", complete=True)
    return out


def _valid_or_none(adapter: TypeAdapter, value: Any) -> Any:
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError:
        return None


def _sections(model: type[BaseModel], raw: dict) -> SimpleNamespace:
    """Each top-level table validated on its own: its typed value, or None when it fails.

    Lets the cross-reference checks run on the sound tables of a file whose schema check
    failed elsewhere, so every problem is found in one pass.
    """
    values = {}
    for name, f in model.model_fields.items():
        if name not in raw:
            values[name] = None if f.is_required() else f.get_default(call_default_factory=True)
            continue
        ann = f.annotation
        try:
            values[name] = TypeAdapter(f.rebuild_annotation()).validate_python(raw[name],
                                                                               strict=True)
        except ValidationError:
            values[name] = None
            if typing.get_origin(ann) is dict and isinstance(raw[name], dict):
                # A table of named entries: keep the sound ones, and the broken ones' names
                # (as None), so references to them are not reported a second time.
                entry = TypeAdapter(typing.get_args(ann)[1])
                values[name] = {k: _valid_or_none(entry, v) for k, v in raw[name].items()}
    return SimpleNamespace(**values)


def _synthetic_references(syn: Synthetic, plan: Any, file: str, where: str,
                          complete: bool) -> list[Problem]:
    out = []
    if complete:
        for name, value in syn:
            if value is None and name not in ("items", "intercepts", "noninvariance"):
                out.append(Problem(file, f"{where}.{name}", "missing required key"))
    for name in (syn.intercepts or {}):
        if name not in plan.variables:
            out.append(Problem(file, f"{where}.intercepts.{name}", "not a variable of the plan"
                               f"{did_you_mean(name, plan.variables)}"))
    planted = syn.noninvariance
    if isinstance(planted, NonInvariance) and planted.item not in plan.variables:
        out.append(Problem(file, f"{where}.noninvariance.item", f"{planted.item!r} is not a "
                           f"variable of the plan{did_you_mean(planted.item, plan.variables)}"))
    if plan.scores is None:
        return out
    # A score that failed its own schema counts as one here: it was reported there.
    scores = {k: (v if v is not None else MeanScore.model_construct())
              for k, v in plan.scores.items()}
    for key in ("loading", "subscales", "subscale_r"):
        for name in getattr(syn.items, key, None) or {}:
            if not isinstance(scores.get(name), MeanScore):
                out.append(Problem(file, f"{where}.items.{key}.{name}", "not a mean score of "
                                   f"the plan{did_you_mean(name, scores)}"))
    for name, subs in (syn.items.subscales if syn.items else {}).items():
        for sub in subs:
            if not isinstance(scores.get(sub), MeanScore):
                out.append(Problem(file, f"{where}.items.subscales.{name}", f"{sub!r} is not a "
                                   f"mean score of the plan{did_you_mean(sub, scores)}"))
    for section in ("r_change", "r_alliance", "r_security"):
        for name in (getattr(syn, section) or {}):
            if name not in plan.variables:
                out.append(Problem(file, f"{where}.{section}.{name}", "not a variable of the plan"
                                   f"{did_you_mean(name, plan.variables)}"))
    return out


def _codebook_problems(book: Any, plan: Any, code: str, file: str) -> list[Problem]:
    """Cross-references of a codebook and against the plan; failed sections (None) are skipped."""
    out: list[Problem] = []
    if plan is not None and plan.variables is None:
        plan = None
    if book.columns is None or book.codebook is None:
        # Without its columns or head there is little to cross-check; the schema said why.
        return out
    empty = {"formats": [], "scales": {}, "extra_columns": [], "synthetic": CodebookSynthetic()}
    book = SimpleNamespace(**{k: empty[k] if getattr(book, k) is None and k in empty
                              else getattr(book, k) for k in CodebookFile.model_fields})
    head = book.codebook
    if head.site != code:
        out.append(Problem(file, "codebook.site", f"{head.site!r} but the folder is site {code!r}"))
    for i, fmt in enumerate(book.formats):
        for enc in [*fmt.encodings, *([fmt.write_encoding] if fmt.write_encoding else [])]:
            try:
                codecs.lookup(enc)
            except LookupError:
                out.append(Problem(file, f"formats[{i}].encodings",
                                   f"{enc!r} is not a known text encoding"))
        try:
            when = datetime.datetime(2024, 1, 31, 13, 45, 30)
            back = datetime.datetime.strptime(when.strftime(fmt.date_format), fmt.date_format)
            if back.date() != when.date():
                raise ValueError
        except ValueError:
            out.append(Problem(file, f"formats[{i}].date_format", f"{fmt.date_format!r} does not "
                               "read back the dates it writes; expected a strptime format with "
                               "day, month and year (e.g. %d/%m/%Y)"))
    if book.ids is not None and book.ids.kind == "sequence":
        try:
            if book.ids.template.format(n=1) == book.ids.template.format(n=2):
                raise ValueError
        except (ValueError, KeyError, IndexError):
            out.append(Problem(file, "ids.template", f"{book.ids.template!r}: expected a "
                               "template with {n} (e.g. \"IT-{n:04d}\")"))
    exts = [e.lower() for f in book.formats for e in f.extensions]
    for dup in sorted({e for e in exts if exts.count(e) > 1}):
        out.append(Problem(file, "formats", f"extension {dup!r} is declared by two formats; a file "
                           "is read with the first only"))
    for name, s in book.scales.items():
        if s is None:
            continue
        n_codes = len(s.native_codes) if s.native_codes is not None else len(s.values)
        if not len(s.values) == len(s.labels) == n_codes:
            out.append(Problem(file, f"scales.{name}", f"{len(s.values)} values, {len(s.labels)} "
                               f"labels and {n_codes} native codes; expected the same number of "
                               "each"))
        codes = s.native_codes if s.native_codes is not None else s.values
        both = sorted({c for c in s.missing_codes if any(
            c == x and not isinstance(x, bool) for x in codes if isinstance(x, (int, float)))})
        if both:
            out.append(Problem(file, f"scales.{name}.missing_codes", f"{both} are answer codes "
                               "too; expected missing codes outside native_codes"))
    natives = [c.column for c in book.columns.values() if c is not None]
    for dup in sorted({n for n in natives if natives.count(n) > 1}):
        out.append(Problem(file, "columns", f"native column {dup!r} is mapped twice"))
    pid = book.columns.get("participant_id")
    if not head.id_column.startswith("TODO") and (pid is None or pid.column != head.id_column) \
            and not ("participant_id" in book.columns and pid is None):
        out.append(Problem(file, "codebook.id_column", f"{head.id_column!r} must be the column of "
                           "participant_id"))
    if head.id_pattern is not None:
        try:
            re.compile(head.id_pattern)
        except re.error as exc:
            out.append(Problem(file, "codebook.id_pattern", f"not a regular expression ({exc})"))
    for name in sorted(set(head.identifying_columns) & set(natives)):
        out.append(Problem(file, "codebook.identifying_columns",
                           f"{name!r} is also a canonical column"))
    extras = [e.column for e in book.extra_columns]
    described = set(natives) | set(extras)
    for i, name in enumerate(head.file_order):
        if name not in described:
            out.append(Problem(file, f"codebook.file_order[{i}]", f"{name!r} is neither a mapped "
                               "column nor an [[extra_columns]] entry (identifying ones too: synth "
                               "needs to know how to fake it); add an [[extra_columns]] entry for "
                               f"it{did_you_mean(name, described)}"))
    codes_format = any(f.values == "codes" for f in book.formats)
    for canonical, spec in book.columns.items():
        if spec is None:
            continue
        key = f"columns.{canonical}"
        if spec.scale and spec.scale not in book.scales:
            out.append(Problem(file, f"{key}.scale", f"{spec.scale!r} is not a scale of this "
                               f"codebook{did_you_mean(spec.scale, book.scales)}"))
        if plan is None:
            continue
        var = plan.variables.get(canonical)
        if var is None and canonical in plan.variables:
            continue
        if var is None:
            out.append(Problem(file, key, f"{canonical!r} is not a variable of the plan"
                               f"{did_you_mean(canonical, plan.variables)}"))
            continue
        scale = book.scales.get(spec.scale)
        if var.type in ("bool", "category") and not spec.scale and var.type == "category":
            out.append(Problem(file, f"{key}.scale",
                               f"the category variable {canonical!r} needs a scale"))
        if scale is None:
            continue
        for value in scale.values:
            if isinstance(value, str) and value.startswith("TODO"):
                continue
            bad = (var.type == "bool" and not isinstance(value, bool)
                   or var.type == "category" and value not in (var.levels or [])
                   or var.type in ("likert", "integer") and (isinstance(value, bool)
                                                             or not isinstance(value, (int, float)))
                   or var.type in ("likert", "integer") and var.valid is not None
                   and not var.valid[0] <= value <= var.valid[1])
            if bad:
                expected = {"bool": "true or false", "category": f"one of {var.levels}"}.get(
                    var.type, f"a number in {var.valid}" if var.valid else "a number")
                out.append(Problem(file, f"scales.{spec.scale}.values", f"{value!r} cannot be a "
                                   f"value of {var.type} variable {canonical!r}; expected "
                                   f"{expected}"))
                break
        if codes_format and var.type in ("bool", "category"):
            native = scale.native_codes if scale.native_codes is not None else scale.values
            if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in native):
                out.append(Problem(file, f"scales.{spec.scale}.native_codes", "a format with "
                                   "values = \"codes\" needs numeric native_codes for this scale "
                                   f"(used by {canonical!r})"))
    if plan is not None:
        for name in plan.variables:
            if name not in book.columns:
                var = plan.variables[name]
                what = f" ({var.label}; {var.type})" if var is not None else ""
                out.append(Problem(file, f"columns.{name}", "missing: every variable of the plan "
                                   f"needs a column{what}"))
    unknown = book.synthetic.mess_unknown_label
    if unknown is not None and unknown.column not in natives:
        out.append(Problem(file, "synthetic.mess_unknown_label.column",
                           f"{unknown.column!r} is not a mapped native column"
                           f"{did_you_mean(unknown.column, natives)}"))
    return out


# --------------------------------------------------------------------------- entry points


def _shown_path(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def plan_model(root: Path | None = None) -> Plan:
    """The typed, checked plan of ``root``; ``ConfigurationError`` listing every problem."""
    root = Path(root or sites_root())
    plan, problems = _check_plan(root)
    if problems:
        raise ConfigurationError(problems)
    return plan  # type: ignore[return-value]


def _check_plan(root: Path) -> tuple[Plan | None, list[Problem]]:
    path = root / PLAN_FILE
    shown = _shown_path(path, root)
    raw, problems = _read_toml(path, shown)
    if raw is None:
        return None, problems
    plan, problems = _schema_problems(Plan, raw, shown)
    view = plan if plan is not None else _sections(Plan, raw)
    problems += _plan_references(view, shown)
    return view, problems


def check_site(folder: Path, plan: Any, root: Path) -> tuple[SiteFile | None, list[Problem]]:
    """Problems of one site folder (``site.toml`` and its codebook) against the plan."""
    path = folder / SITE_FILE
    shown = _shown_path(path, root)
    raw, problems = _read_toml(path, shown)
    if raw is None:
        return None, problems
    site, problems = _schema_problems(SiteFile, raw, shown)
    if site is not None and site.site.code != folder.name:
        problems.append(Problem(shown, "site.code",
                                f"{site.site.code!r} but the folder is {folder.name!r}"))
    if site is not None and plan is not None and plan.variables is not None:
        problems += _synthetic_references(site.synthetic, plan, shown, "synthetic", complete=False)
    meta = raw.get("site") if isinstance(raw.get("site"), dict) else {}
    book_path = folder / str(meta.get("codebook", "codebook.toml"))
    book_shown = _shown_path(book_path, root)
    raw_book, book_problems = _read_toml(book_path, book_shown)
    if raw_book is not None:
        book, book_problems = _schema_problems(CodebookFile, raw_book, book_shown)
        view = book if book is not None else _sections(CodebookFile, raw_book)
        book_problems += _codebook_problems(view, plan, folder.name, book_shown)
    return site, problems + book_problems


def check_sites(root: Path | None = None) -> list[Problem]:
    """Every problem of the plan and of every site folder under ``root`` (default: the sites root).

    Returns
    -------
    list of Problem
        Empty when the configuration is sound. Each prints as one line naming the file,
        the key path, the value found and what was expected.

    Examples
    --------
    >>> check_sites()
    []
    """
    root = Path(root or sites_root())
    if not (root / PLAN_FILE).is_file():
        return [Problem(str(root), "", f"no {PLAN_FILE} here: not a sites folder (set "
                        "LACRIMA_SITES or pass --sites)")]
    plan, problems = _check_plan(root)
    if plan is None and not problems:
        problems = [Problem(str(root / PLAN_FILE), "", "unreadable")]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / SITE_FILE).exists())
    roles = []
    for folder in folders:
        site, site_problems = check_site(folder, plan, root)
        problems += site_problems
        roles.append(site.site.role if site is not None else None)
    for p in sorted(p for p in root.iterdir() if p.is_dir() and not (p / SITE_FILE).exists()
                    and (p / "codebook.toml").exists()):
        problems.append(Problem(_shown_path(p, root), "", f"has a codebook but no {SITE_FILE}"))
    for role in ROLES:
        if folders and None not in roles and role not in roles:
            problems.append(Problem(_shown_path(root, root), "", f"no site has role {role!r}; "
                                    "a replication study needs at least one original and one "
                                    "replication"))
    return problems
