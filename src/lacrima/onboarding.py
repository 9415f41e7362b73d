"""Draft a new site folder from the survey tool the site already uses.

``draft_site`` reads a REDCap data dictionary (CSV), a Qualtrics survey file (.qsf, JSON) or
an SPSS data file (.sav, its dictionary only) and writes ``sites/<code>/site.toml`` and
``codebook.toml``:

- every native field is listed: mapped to a canonical variable, as an identifying column,
  or as an ``[[extra_columns]]`` entry with its label; every choice field becomes a scale
  with its labels and codes;
- identifying fields are pre-marked: REDCap's "Identifier?" column (and e-mail / phone
  validation) and its ``redcap_survey_identifier``, Qualtrics' recipient, IP and location
  metadata, any field whose name looks identifying (``lacrima.native.IDENTIFYING_NAME``)
  and free-text questions asking for a name, e-mail, phone or address;
- a canonical mapping is filled only where it is certain: the field's name equals the
  variable's name up to case, separators and leading zeros (``wai_1`` is ``wai_01``), or its
  label equals the plan's label; the tool's own ID and completion date columns;
- choice fields with the same answers and study values share one scale (the twelve
  WAI-SR items are one ``[scales.wai]``); yes/no labels and the answer labels that give a
  true/false or category value are words of the site's language, kept as data in
  ``common_labels.toml`` (en, it, he, de);
- everything else is a TODO: a commented line under ``[columns]`` per unmapped variable,
  and ``"TODO: ..."`` text where a value is needed. ``lacrima sites check`` lists what is left.

Or the pairing is done in a spreadsheet: ``write_mapping_sheet`` (``sites new
--mapping-sheet``) lists every native field with its label, a suggested study variable
and a confidence (``suggest_mapping``), and an empty ``study_variable`` column for a
person; ``apply_mapping`` (``sites apply-mapping``) writes the codebook from it, or says in
one line per problem what is wrong (file, row, column, value).

The source file is configuration (a dictionary), never participant data: an SPSS file is
opened for its dictionary only.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import json
import re
import textwrap
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from lacrima.contract import ROLES, did_you_mean
from lacrima.study import SITE_FILE, load_study

TODO = "TODO"

REDCAP_COLUMNS = {
    "name": "Variable / Field Name", "form": "Form Name", "type": "Field Type",
    "label": "Field Label", "choices": "Choices, Calculations, OR Slider Labels",
    "validation": "Text Validation Type OR Show Slider Number", "identifier": "Identifier?",
}
"""Columns of a REDCap data dictionary this reader needs (the header REDCap writes)."""

QUALTRICS_IDENTIFYING = ("IPAddress", "RecipientLastName", "RecipientFirstName", "RecipientEmail",
                         "ExternalReference", "LocationLatitude", "LocationLongitude")
QUALTRICS_METADATA = {
    "StartDate": ("Start Date", "startDate"), "EndDate": ("End Date", "endDate"),
    "Status": ("Response Type", "status"), "IPAddress": ("IP Address", "ipAddress"),
    "Progress": ("Progress", "progress"),
    "Duration (in seconds)": ("Duration (in seconds)", "duration"),
    "Finished": ("Finished", "finished"), "RecordedDate": ("Recorded Date", "recordedDate"),
    "ResponseId": ("Response ID", "_recordId"),
    "RecipientLastName": ("Recipient Last Name", "recipientLastName"),
    "RecipientFirstName": ("Recipient First Name", "recipientFirstName"),
    "RecipientEmail": ("Recipient Email", "recipientEmail"),
    "ExternalReference": ("External Data Reference", "externalDataReference"),
    "LocationLatitude": ("Location Latitude", "locationLatitude"),
    "LocationLongitude": ("Location Longitude", "locationLongitude"),
    "DistributionChannel": ("Distribution Channel", "distributionChannel"),
    "UserLanguage": ("User Language", "userLanguage"),
}
"""Columns every Qualtrics CSV export starts with, in its order: header rows 2 and 3 (ImportId)."""


REDCAP_SURVEY_IDENTIFIER = "redcap_survey_identifier"
"""Column a REDCap export of a survey project adds: the name or e-mail the survey was sent to."""

SHEET_COLUMNS = ("native_field", "answer_code", "native_label", "suggested", "confidence",
                 "study_variable")
"""Columns of a mapping sheet, in order; a person fills in ``study_variable``."""

IDENTIFYING = "identifying"
NOT_PAIRED = "-"


@functools.cache
def common_labels(language: str) -> dict:
    """The words of ``common_labels.toml`` for ``language`` (English when not listed).

    >>> common_labels("de")["yes_no"]
    ['Ja', 'Nein']
    >>> common_labels("xx")["yes_no"]
    ['Yes', 'No']
    """
    data = tomllib.loads(files("lacrima").joinpath("common_labels.toml")
                         .read_text(encoding="utf-8"))
    return data.get(language) or data["en"]


class OnboardingError(ValueError):
    """The source is not the tool's dictionary (the message names the file and what it expected)."""


class MappingError(OnboardingError):
    """A mapping sheet that cannot become a codebook: one line per problem in ``lines``."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass
class NativeField:
    """One field of the site's instrument, as its tool describes it."""

    name: str
    label: str = ""
    kind: str = "text"                 # text, number, date, choice, bool, other
    codes: list[Any] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    identifying: bool = False
    import_id: str = ""
    missing_codes: list[float] = field(default_factory=list)
    group: str = ""                    # the matrix / battery the field belongs to, if any


@dataclass
class Source:
    """What a tool's dictionary says: fields in file order and how the files look."""

    tool: str
    fields: list[NativeField]
    id_column: str
    format_lines: list[str]
    completed_column: str = ""
    extras: list[NativeField] = field(default_factory=list)
    file_order: list[str] = field(default_factory=list)
    ids_lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- readers


def _redcap_choices(text: str, name: str, path: Path) -> tuple[list[Any], list[str]]:
    codes, labels = [], []
    for part in (p.strip() for p in (text or "").split("|")):
        if not part:
            continue
        code, sep, label = part.partition(",")
        if not sep:
            raise OnboardingError(f"{path}: field {name!r}: choice {part!r} is not 'code, label'")
        code = code.strip()
        codes.append(int(code) if re.fullmatch(r"-?\d+", code) else code)
        labels.append(label.strip())
    return codes, labels


def read_redcap_dictionary(path: Path, language: str = "en") -> Source:
    """Fields of a REDCap data dictionary (the CSV "Download the Data Dictionary" gives).

    The first field is the record ID (REDCap's rule). Radio and dropdown fields become
    choice fields; yesno / truefalse are booleans coded 1 / 0, labelled in ``language``
    (``common_labels``); checkbox fields export one ``field___code`` column per choice
    (tool metadata unless mapped); descriptive fields have no column. A survey project's
    export adds ``redcap_survey_identifier`` (the name or e-mail a survey was sent to):
    listed as identifying.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise OnboardingError(f"{path}: not UTF-8 text; download the data dictionary again "
                              "from REDCap (Project Setup > Data Dictionary)") from None
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    header = rows[0].keys() if rows else []
    missing = [c for c in REDCAP_COLUMNS.values() if c not in header]
    if missing:
        raise OnboardingError(f"{path}: not a REDCap data dictionary: no column(s) "
                              f"{', '.join(repr(c) for c in missing)} (download it from REDCap: "
                              "Project Setup > Data Dictionary)")
    fields, extras, forms = [], [], []
    for row in rows:
        name = row[REDCAP_COLUMNS["name"]].strip()
        ftype = row[REDCAP_COLUMNS["type"]].strip().lower()
        label = re.sub(r"<[^>]+>", "", row[REDCAP_COLUMNS["label"]]).strip()
        validation = row[REDCAP_COLUMNS["validation"]].strip().lower()
        ident = row[REDCAP_COLUMNS["identifier"]].strip().lower() in ("y", "yes")
        form = row[REDCAP_COLUMNS["form"]].strip()
        group = (row.get("Matrix Group Name") or "").strip()
        if form and form not in forms:
            forms.append(form)
        if ftype == "descriptive":
            continue
        f = NativeField(name=name, label=label, group=group,
                        identifying=ident or validation in ("email", "phone"))
        if ftype in ("radio", "dropdown"):
            f.kind = "choice"
            f.codes, f.labels = _redcap_choices(row[REDCAP_COLUMNS["choices"]], name, path)
        elif ftype in ("yesno", "truefalse"):
            f.kind = "bool"
            f.codes = [1, 0]
            f.labels = list(common_labels(language)["yes_no" if ftype == "yesno" else "true_false"])
        elif ftype == "checkbox":
            codes, labels = _redcap_choices(row[REDCAP_COLUMNS["choices"]], name, path)
            for code, lab in zip(codes, labels):
                extras.append(NativeField(name=f"{name}___{str(code).lower()}",
                                          label=f"{label} ({lab})", identifying=f.identifying))
            continue
        elif validation.startswith("date"):
            f.kind = "date"
        elif validation in ("integer", "number") or ftype in ("calc", "slider"):
            f.kind = "number"
        fields.append(f)
    if not fields:
        raise OnboardingError(f"{path}: the data dictionary lists no fields")
    extras.append(NativeField(name=REDCAP_SURVEY_IDENTIFIER, label="Survey Identifier",
                              identifying=True))
    return Source(
        tool="redcap", fields=fields, id_column=fields[0].name, extras=extras,
        format_lines=[
            '# REDCap "Export Data > CSV / Microsoft Excel (raw data)" (field names, codes); the',
            '# "labels" export (field labels, choice labels) is read too, by each column\'s text.',
            "[[formats]]", 'kind = "redcap_csv"', 'extensions = [".csv"]',
            'encodings = ["utf-8-sig"]',
            'write_encoding = "utf-8"', 'delimiter = ","', 'decimal = "."', "header_rows = 1",
            'date_format = "%Y-%m-%d"', 'values = "codes"',
        ],
        ids_lines=["[ids]", 'kind = "sequence"', 'template = "{n}"'],
    )


def read_qualtrics_survey(path: Path) -> Source:
    """Fields of a Qualtrics survey file (.qsf: ``SurveyElements`` with ``Element = "SQ"``).

    Multiple choice questions give one column (their ``DataExportTag``); matrix questions one
    column per statement (``Tag_choice``), all on the matrix's answer scale; text entry one
    column. Labels are the choices' ``Display`` text (what "Use choice text" exports), codes
    their ``RecodeValues`` (what "Use numeric values" exports).
    """
    try:
        survey = json.loads(path.read_bytes().decode("utf-8-sig"))
        elements = survey["SurveyElements"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise OnboardingError(f"{path}: not a Qualtrics survey file (expected the JSON of "
                              "Survey > Tools > Import/Export > Export Survey, with "
                              "SurveyElements)") from None
    fields = []
    for el in elements:
        if el.get("Element") != "SQ":
            continue
        q = el.get("Payload") or {}
        qid, tag = q.get("QuestionID", ""), q.get("DataExportTag") or q.get("QuestionID", "")
        text = re.sub(r"<[^>]+>", "", q.get("QuestionText", "")).strip()
        qtype = q.get("QuestionType")
        choices = q.get("Choices") or {}
        recode = q.get("RecodeValues") or {}
        order = [str(c) for c in (q.get("ChoiceOrder") or list(choices))]

        def scale(ids, table, recodes):
            return ([_number(recodes.get(i, i)) for i in ids],
                    [re.sub(r"<[^>]+>", "", str(table[i].get("Display", ""))).strip() for i in ids])

        if qtype == "MC":
            codes, labels = scale(order, choices, recode)
            fields.append(NativeField(name=tag, label=text, kind="choice", codes=codes,
                                      labels=labels, import_id=qid))
        elif qtype == "Matrix":
            answers = q.get("Answers") or {}
            a_order = [str(a) for a in (q.get("AnswerOrder") or list(answers))]
            codes, labels = scale(a_order, answers, recode)
            tags = q.get("ChoiceDataExportTags") or {}
            for c in order:
                statement = re.sub(r"<[^>]+>", "", str(choices[c].get("Display", ""))).strip()
                fields.append(NativeField(name=tags.get(c) or f"{tag}_{c}",
                                          label=f"{text} - {statement}", kind="choice",
                                          codes=list(codes), labels=list(labels),
                                          import_id=f"{qid}_{c}", group=tag))
        elif qtype == "TE":
            content = ((q.get("Validation") or {}).get("Settings") or {}).get("ContentType", "")
            personal = content in ("ValidEmail", "ValidPhone", "ValidZip")
            fields.append(NativeField(name=tag, label=text, import_id=f"{qid}_TEXT",
                                      identifying=personal))
    if not fields:
        raise OnboardingError(f"{path}: the survey file holds no questions (no SQ elements)")
    meta = {n: NativeField(name=n, label=text, identifying=n in QUALTRICS_IDENTIFYING,
                           import_id=json.dumps({"ImportId": key}, separators=(",", ":")))
            for n, (text, key) in QUALTRICS_METADATA.items()}
    id_field, done = meta.pop("ResponseId"), meta.pop("RecordedDate")
    done.kind = "date"
    return Source(
        tool="qualtrics", fields=[id_field, done, *fields], id_column="ResponseId",
        completed_column="RecordedDate", extras=list(meta.values()),
        file_order=list(QUALTRICS_METADATA),
        format_lines=[
            '# Qualtrics "Export data > CSV, Use choice text": three header rows. A file exported',
            '# with "Use numeric values" needs values = "codes" (codes are the RecodeValues).',
            "[[formats]]", 'kind = "qualtrics_csv"', 'extensions = [".csv"]',
            'encodings = ["utf-8-sig"]',
            'write_encoding = "utf-8-sig"', 'delimiter = ","', 'decimal = "."', "header_rows = 3",
            'date_format = "%Y-%m-%d %H:%M:%S"', 'values = "labels"',
        ],
        ids_lines=["[ids]", 'kind = "random"', 'prefix = "R_"', "length = 15"],
    )


def read_spss_dictionary(path: Path) -> Source:
    """Fields of an SPSS .sav file's dictionary: names, variable and value labels, user-missing."""
    import pyreadstat

    from lacrima.codebook import FileFormat
    from lacrima.findings import DropError
    from lacrima.native import _pick_encoding, _redecoder, _sav_encodings

    try:
        fmt = FileFormat(kind="sav", extensions=(".sav",), header_rows=0, values="codes")
        candidates = _sav_encodings(path, fmt, pyreadstat)
        _, meta = pyreadstat.read_sav(str(path), metadataonly=True, user_missing=True,
                                      encoding="latin1" if candidates else None)
        texts = [*meta.column_names, *(x or "" for x in meta.column_labels),
                 *(str(lab) for vl in meta.variable_value_labels.values() for lab in vl.values())]
        encoding = _pick_encoding(candidates, texts, repr(path.name)) if candidates else None
        fix = (lambda s: s) if encoding is None else _redecoder(encoding, repr(path.name))
    except DropError as err:
        raise OnboardingError(str(err)) from None
    except Exception as exc:  # pyreadstat's own error classes
        raise OnboardingError(f"{path}: not a readable SPSS .sav file "
                              f"({type(exc).__name__})") from None
    labels = dict(zip(meta.column_names, meta.column_labels))
    fields = []
    for name in meta.column_names:
        vl = meta.variable_value_labels.get(name) or {}
        missing = [float(r["lo"]) for r in (meta.missing_ranges or {}).get(name, ())
                   if isinstance(r.get("lo"), (int, float)) and r.get("lo") == r.get("hi")]
        f = NativeField(name=fix(name), label=fix(labels.get(name) or ""), missing_codes=missing)
        choices = [(c, lab) for c, lab in vl.items() if float(c) not in missing]
        if choices:
            f.kind = "choice"
            f.codes = [_number(c) for c, _ in choices]
            f.labels = [fix(str(lab)) for _, lab in choices]
        elif "date" in (meta.original_variable_types.get(name, "") or "").lower():
            f.kind = "date"
        fields.append(f)
    enc = f'encodings = ["{encoding}"]' if encoding else 'encodings = ["utf-8"]'
    return Source(
        tool="spss", fields=fields, id_column="",
        format_lines=["# SPSS .sav: numeric codes, value labels, user-missing codes.",
                      "[[formats]]",
                      'kind = "sav"', 'extensions = [".sav"]', enc, "header_rows = 0",
                      'date_format = "%d.%m.%Y"', 'values = "codes"'],
        ids_lines=["[ids]", 'kind = "sequence"', 'template = "{n}"'],
    )


def _number(value: Any) -> Any:
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        f = float(text)
    except ValueError:
        return text
    return int(f) if f.is_integer() else f


# --------------------------------------------------------------------------- mapping


def _norm_name(name: str) -> str:
    # wai_01, WAI1 and wai-1 are one name; separators and leading zeros carry no meaning.
    return re.sub(r"(?<!\d)0+(?=\d)", "", re.sub(r"[^0-9a-z]", "", name.casefold()))


def _norm_label(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _has_word(text: str, words) -> bool:
    """Whether one of ``words`` is in ``text`` as a whole word (case and spacing ignored)."""
    text = _norm_label(text)
    return any(re.search(rf"(?<!\w){re.escape(_norm_label(w))}(?!\w)", text) for w in words)


def _identifying(f: NativeField, language: str) -> bool:
    """Marked by the tool, named like a person's details, or a free-text question asking for them."""
    from lacrima.native import IDENTIFYING_NAME

    return (f.identifying or bool(IDENTIFYING_NAME.search(f.name))
            or (f.kind == "text" and _has_word(f.label, common_labels(language)["identifying"])))


@dataclass(frozen=True)
class Suggestion:
    """The study variable a native field most likely is (or ``identifying``), and how sure."""

    target: str
    confidence: float


def suggest_mapping(source: Source, variables: dict, language: str) -> dict[str, Suggestion]:
    """Native field name -> its suggested study variable (or ``identifying``), with a confidence.

    Notes
    -----
    Confidence 1.0: the tool's own ID or completion column; a name equal to the variable's
    up to case, separators and leading zeros (``wai_1`` is ``wai_01``); a label equal to the
    plan's label; a field the tool marks identifying. 0.8: a word ``common_labels`` ties to
    the variable in the site's language is in the field's name or question (``alter`` is
    ``age``), or a name or free-text question that looks identifying. Otherwise the
    similarity of the two names (``difflib.SequenceMatcher.ratio``) when at least 0.75.
    Each variable is suggested for one field, the most confident pairs first.
    """
    everything = [*source.fields, *source.extras]
    out: dict[str, Suggestion] = {}
    for f in everything:
        if f.name != source.id_column and _identifying(f, language):
            out[f.name] = Suggestion(IDENTIFYING, 1.0 if f.identifying else 0.8)
    hints = common_labels(language).get("variables", {})
    candidates = []
    for order, f in enumerate(everything):
        if f.name in out:
            continue
        for canonical, var in variables.items():
            if f.name == source.id_column or canonical == "participant_id":
                c = float(f.name == source.id_column and canonical == "participant_id")
            elif f.name == source.completed_column and canonical == "completed_at":
                c = 1.0
            elif (_norm_name(f.name) == _norm_name(canonical)
                  or (var.get("label") and _norm_label(f.label) == _norm_label(var["label"]))):
                c = 1.0
            else:
                ratio = difflib.SequenceMatcher(None, _norm_name(f.name),
                                                _norm_name(canonical)).ratio()
                c = max(0.8 if _has_word(f"{f.name.replace('_', ' ')} {f.label}",
                                         hints.get(canonical, ())) else 0.0,
                        round(min(ratio, 0.95), 2) if ratio >= 0.75 else 0.0)
            if c:
                candidates.append((-c, order, f.name, canonical))
    taken: set[str] = set()
    for negative, _, name, canonical in sorted(candidates):
        if name not in out and canonical not in taken:
            out[name] = Suggestion(canonical, -negative)
            taken.add(canonical)
    return out


def _expected(var: dict) -> str:
    if var["type"] == "bool":
        return "true or false"
    if var["type"] == "category":
        return "one of " + ", ".join(var.get("levels", ()))
    lo, hi = var.get("valid", (None, None))
    return f"a number from {_q(lo)} to {_q(hi)}" if lo is not None else "a number"


def _scale_values(f: NativeField, var: dict | None, language: str) -> tuple[list[Any], bool]:
    """Canonical values for a choice field, and whether they are certain.

    A true/false or category variable's values come from the answer labels: the level's own
    name or a word ``common_labels`` gives for it in the site's language (``weiblich`` is
    ``woman``, ``Sì`` is true).
    """
    if f.kind == "bool" and (var is None or var["type"] == "bool"):
        return [c == 1 for c in f.codes], True
    if var is not None and var["type"] in ("category", "bool"):
        words = common_labels(language).get("values", {})
        pairs = ([(lev, lev) for lev in var.get("levels", ())] if var["type"] == "category"
                 else [("true", True), ("false", False)])
        table: dict[str, Any] = {}
        for key, value in pairs:
            for word in (key, *words.get(key, ())):
                table.setdefault(_norm_label(word), value)
        if all(_norm_label(lab) in table for lab in f.labels):
            return [table[_norm_label(lab)] for lab in f.labels], True
        return [f"{TODO}: {_expected(var)}" for _ in f.labels], False
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in f.codes)
    if var is not None and var["type"] in ("likert", "integer") and numeric:
        lo, hi = var.get("valid", (None, None))
        if lo is not None and sorted(f.codes) == list(range(int(lo), int(hi) + 1)):
            return list(f.codes), True
        return list(f.codes), False
    return list(f.codes) if numeric else [f"{TODO}: canonical value" for _ in f.labels], var is None


# --------------------------------------------------------------------------- writing


def _q(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _list(values) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _scale_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]", "_", name) or "scale"


def render_codebook(code: str, source: Source, variables: dict, language: str, *,
                    mapping: dict[str, str] | None = None,
                    answers: dict[str, list] | None = None,
                    identifying: set[str] | None = None,
                    origin: str = "DRAFT written by `lacrima sites new`") -> tuple[str, int]:
    """The ``codebook.toml`` text and the number of TODOs in it.

    Parameters
    ----------
    code, source, variables, language
        The site, what its tool's dictionary says, the plan's variables and the site's
        language (``common_labels``; English when unknown).
    mapping : dict, optional
        Study variable -> native field name. Default: the suggestions of confidence 1.
    answers : dict, optional
        Native field name -> the study value of each of its answers, in its answers' order.
        Default: the values read from the labels where they are certain, else TODOs.
    identifying : set, optional
        Native fields to list as identifying. Default: the suggested ones.
    origin : str
        What wrote the file (its first line).

    Notes
    -----
    Choice fields with the same codes, labels and study values share one scale, named
    after the matrix most of them belong to (else after the first of them).
    """
    words = language if not language.startswith(TODO) else "en"
    everything = {f.name: f for f in (*source.fields, *source.extras)}
    if mapping is None or identifying is None:
        suggestions = suggest_mapping(source, variables, words)
    if mapping is None:
        mapping = {s.target: name for name, s in suggestions.items()
                   if s.confidence == 1.0 and s.target in variables}
    if identifying is None:
        identifying = {name for name, s in suggestions.items() if s.target == IDENTIFYING}
    answers = answers or {}
    mapped_fields = {name: c for c, name in mapping.items()}
    ident = [name for name in everything if name in identifying and name not in mapped_fields]
    todo = 0
    lines = [f"# Codebook of site {code!r}: {origin} from its {source.tool} dictionary.",
             "# Lines marked TODO are left to a person; `lacrima sites check` lists what remains.",
             "# Every native field is listed: under [columns] (canonical), in identifying_columns,",
             "# or under [[extra_columns]] (kept out of the analysis, no warning).", "",
             "[codebook]", f"site = {_q(code)}", f"language = {_q(language)}"]
    id_column = mapping.get("participant_id") or source.id_column or TODO
    if id_column == TODO:
        todo += 1
        lines.append("# TODO: id_column is the native column of participant_id")
    lines += [f"id_column = {_q(id_column)}", f"identifying_columns = {_list(ident)}"]
    if source.file_order:
        lines.append(f"file_order = {_list(source.file_order)}")
    lines += ["", *source.format_lines, "", *source.ids_lines, ""]
    shared: dict[tuple, tuple[list[NativeField], list, bool]] = {}
    for f in source.fields:
        if f.kind not in ("choice", "bool") or f.name in ident:
            continue
        if f.name in answers:
            values, certain = answers[f.name], True
        else:
            values, certain = _scale_values(f, variables.get(mapped_fields.get(f.name, "")), words)
        # repr: True == 1 in Python, and a true/false scale is not a 0/1 one.
        key = (repr(f.codes), repr(f.labels), repr(values), certain, repr(f.missing_codes))
        shared.setdefault(key, ([], values, certain))[0].append(f)
    scales: dict[str, str] = {}
    for members, values, certain in shared.values():
        groups = [m.group for m in members if m.group]
        base = _scale_name(max(groups, key=groups.count) if groups
                           else "yes_no" if members[0].kind == "bool" else members[0].name)
        name, n = base, 2
        while name in scales.values():
            name, n = f"{base}_{n}", n + 1
        scales.update({m.name: name for m in members})
        f = members[0]
        lines.append(f"[scales.{name}]" + (
            "" if certain else "  # TODO: check values (the canonical value of each label)"))
        todo += 0 if certain else 1
        if len(members) > 1:
            lines += textwrap.wrap(f"{len(members)} fields: {', '.join(m.name for m in members)}",
                                   width=96, initial_indent="# ", subsequent_indent="#   ")
        lines += [f"values = {_list(values)}", f"labels = {_list(f.labels)}",
                  f"native_codes = {_list(f.codes)}"]
        if f.missing_codes:
            lines.append(f"missing_codes = {_list(f.missing_codes)}")
    lines += ["", "[columns]"]
    for canonical, var in variables.items():
        if canonical not in mapping:
            todo += 1
            scale = ', scale = "..."' if var["type"] in ("bool", "category", "likert") else ""
            lines.append(f'# TODO {canonical} = {{ column = "..."{scale} }}'
                         f"  # {var.get('label', '')} ({var['type']})")
            continue
        f = everything[mapping[canonical]]
        parts = [f"column = {_q(f.name)}"]
        if f.name in scales:
            parts.append(f"scale = {_q(scales[f.name])}")
        if f.label:
            parts.append(f"text = {_q(f.label)}")
        if f.import_id:
            parts.append(f"import_id = {_q(f.import_id)}")
        if f.missing_codes and f.name not in scales:
            parts.append(f"missing_codes = {_list(f.missing_codes)}")
        lines.append(f"{canonical} = {{ {', '.join(parts)} }}")
    extras = [f for f in everything.values() if f.name not in mapped_fields and f.name not in ident]
    if extras:
        lines += ["", "# Native fields not (yet) mapped: map one under [columns] (and remove its",
                  "# entry here) when it is a canonical variable; leave the rest as they are."]
    for f in extras:
        lines += ["", "[[extra_columns]]", f"column = {_q(f.name)}"]
        if f.label:
            lines.append(f"text = {_q(f.label)}")
        if f.import_id:
            lines.append(f"import_id = {_q(f.import_id)}")
        if f.labels and f.name not in scales:
            choices = "; ".join(f"{c} = {lab}" for c, lab in zip(f.codes, f.labels))
            lines.append(f"# choices: {choices}")
        elif f.name in scales:
            lines.append(f"# choices: see [scales.{scales[f.name]}]")
    return "\n".join(lines) + "\n", todo


# --------------------------------------------------------------------------- the mapping sheet


def _cell(value: Any) -> str:
    return _q(value).strip('"') if not isinstance(value, str) else value


def mapping_sheet_rows(source: Source, variables: dict, language: str) -> list[dict[str, str]]:
    """The rows of a mapping sheet: one per native field, then one per answer of a choice field
    that stands alone (not an item of a battery, whose answers are the items' codes).

    A field row suggests a study variable (or ``identifying``); an answer row suggests the
    answer's study value for the suggested variable when the labels leave no doubt. The
    ``study_variable`` column is empty: a person fills it in where the suggestion is wrong
    or missing.
    """
    suggestions = suggest_mapping(source, variables, language)
    answer_sets = [repr((f.codes, f.labels)) for f in source.fields if f.kind == "choice"]
    rows = []
    for f in (*source.fields, *source.extras):
        s = suggestions.get(f.name)
        rows.append({"native_field": f.name, "answer_code": "", "native_label": f.label,
                     "suggested": s.target if s else "",
                     "confidence": f"{s.confidence:.2f}" if s else "", "study_variable": ""})
        var = variables.get(s.target) if s else None
        # Items of a battery (a matrix, or three or more fields with one answer set) take
        # their codes; a true/false or category question needs its answers' values.
        battery = f.group or answer_sets.count(repr((f.codes, f.labels))) >= 3
        if (f.kind != "choice" or (s and s.target == IDENTIFYING)
                or (battery and not (var and var["type"] in ("bool", "category")))):
            continue
        values, certain = _scale_values(f, var, language)
        for code, label, value in zip(f.codes, f.labels, values):
            sure = var is not None and certain
            rows.append({"native_field": f.name, "answer_code": str(code), "native_label": label,
                         "suggested": _cell(value) if sure else "",
                         "confidence": f"{s.confidence:.2f}" if sure else "",
                         "study_variable": ""})
    return rows


def _companion(sheet: Path) -> Path:
    # The dictionary as read, beside the sheet: apply-mapping needs it, the person never edits it.
    return sheet.with_suffix(".json")


def write_mapping_sheet(sheet: Path, code: str, source: Source, variables: dict,
                        language: str) -> Path:
    """Write the mapping sheet (CSV, UTF-8 with a byte order mark, as Excel opens it) and the
    dictionary beside it (``<sheet>.json``) that ``apply_mapping`` reads. Returns the sheet.

    ``language`` is the site's, as given (empty: not known yet; English words are used)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SHEET_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(mapping_sheet_rows(source, variables, language or "en"))
    sheet.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
    _companion(sheet).write_text(json.dumps(
        {"site": code, "language": language, "source": dataclasses.asdict(source)},
        ensure_ascii=False, indent=1), encoding="utf-8")
    return sheet


def _read_sheet(sheet: Path) -> list[tuple[int, dict[str, str]]]:
    """(spreadsheet row number, cells) of each data row; "," or ";" as Excel saved it."""
    data = sheet.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")   # Excel's plain "CSV" in Western Europe
        except UnicodeDecodeError:
            raise MappingError([f"{sheet}: neither UTF-8 nor Windows-1252 text; save it as "
                                "\"CSV UTF-8\""]) from None
    first = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text, newline=""),
                            delimiter=";" if first.count(";") > first.count(",") else ",")
    missing = [c for c in ("native_field", "answer_code", "study_variable")
               if c not in (reader.fieldnames or ())]
    if missing:
        raise MappingError([f"{sheet}: row 1: no column {', '.join(repr(c) for c in missing)}; "
                            f"expected the header {','.join(SHEET_COLUMNS)}"])
    return [(n, {k: (v or "").strip() for k, v in row.items() if k})
            for n, row in enumerate(reader, start=2)]


def _answer_value(text: str, var: dict) -> tuple[Any, str]:
    """A person's study value for an answer, and what was wrong with it ('' when fine)."""
    kind = var["type"]
    if kind == "bool":
        return (text.casefold() == "true", "") if text.casefold() in ("true", "false") else (
            None, "expected true or false")
    if kind == "category":
        levels = var.get("levels", ())
        return (text, "") if text in levels else (
            None, f"expected {_expected(var)}{did_you_mean(text, levels)}")
    value = _number(text)
    lo, hi = var.get("valid", (None, None))
    if isinstance(value, (int, float)) and (lo is None or lo <= value <= hi):
        return value, ""
    return None, f"expected {_expected(var)}"


def _pairing(sheet: Path, rows, source: Source, variables: dict, language: str):
    """The sheet read against the dictionary and the plan: mapping, answers, identifying, errors."""
    fields = {f.name: f for f in (*source.fields, *source.extras)}

    def at(n, column, value):
        return f"{sheet}: row {n}, column {column}: {value!r}"

    errors: list[str] = []
    field_row: dict[str, int] = {}
    paired: dict[str, tuple[str, int]] = {}
    ident: set[str] = set()
    answer_cells: dict[str, dict[str, tuple[int, str]]] = {}
    for n, row in rows:
        name, code, chosen = (row.get(c, "") for c in ("native_field", "answer_code",
                                                        "study_variable"))
        if not (name or code or chosen):
            continue
        f = fields.get(name)
        if f is None:
            errors.append(f"{at(n, 'native_field', name)} is not a field of the dictionary"
                          f"{did_you_mean(name, fields)}")
            continue
        if code:
            codes = [str(c) for c in f.codes]
            cells = answer_cells.setdefault(name, {})
            if code not in codes:
                errors.append(f"{at(n, 'answer_code', code)} is not an answer code of {name!r} "
                              f"(its codes: {', '.join(codes) or 'none'})")
            elif code in cells:
                errors.append(f"{at(n, 'answer_code', code)}: answer of {name!r} listed twice "
                              f"(row {cells[code][0]} too)")
            else:
                cells[code] = (n, chosen)
            continue
        if name in field_row:
            errors.append(f"{at(n, 'native_field', name)} is paired twice: row {field_row[name]} "
                          "is this field too; keep one row per field")
            continue
        field_row[name] = n
        target, column = (chosen, "study_variable") if chosen else (row.get("suggested", ""),
                                                                      "suggested")
        if target in ("", NOT_PAIRED, IDENTIFYING):
            if target == IDENTIFYING or f.identifying:   # the tool's mark is not a person's to undo
                ident.add(name)
            continue
        if target not in variables:
            errors.append(f"{at(n, column, target)} is not a study variable"
                          f"{did_you_mean(target, variables)}; write a variable of "
                          f"sites/study.toml, {IDENTIFYING!r} or {NOT_PAIRED!r}")
        elif f.identifying:
            errors.append(f"{at(n, column, target)}: {name!r} is marked identifying in the "
                          f"{source.tool} dictionary and never enters the study data")
        elif target in paired:
            errors.append(f"{at(n, column, target)} is paired with {paired[target][0]!r} in row "
                          f"{paired[target][1]} too; a study variable takes one field")
        else:
            paired[target] = (name, n)
    for canonical, var in variables.items():
        if canonical not in paired:
            errors.append(f"{sheet}: column study_variable: {canonical!r} ({var.get('label', '')}; "
                          f"{var['type']}) is paired with no field; write it on its field's row")
    answers: dict[str, list] = {}
    for canonical, (name, n) in paired.items():
        f, var = fields[name], variables[canonical]
        if f.kind not in ("choice", "bool"):
            continue
        auto, certain = _scale_values(f, var, language)
        cells = answer_cells.get(name, {})
        values = []
        for code, label, value in zip(f.codes, f.labels, auto):
            m, text = cells.get(str(code), (0, ""))
            if text:
                value, problem = _answer_value(text, var)
                if problem:
                    errors.append(f"{at(m, 'study_variable', text)}: answer {label!r} of {name!r} "
                                  f"({canonical}): {problem}")
            elif not certain:
                where = (f"row {m}, column study_variable: empty" if m else
                         f"row {n}, column study_variable: {canonical!r}")
                errors.append(f"{sheet}: {where}: answer {label!r} (code {code}) of {name!r} "
                              f"needs its value of {canonical!r}, {_expected(var)}"
                              + ("" if m else f"; add a row with native_field {name}, "
                                 f"answer_code {code}"))
            values.append(value)
        if cells:
            answers[name] = values
    return {c: name for c, (name, _) in paired.items()}, answers, ident, errors


def apply_mapping(sheet: Path, root: Path) -> tuple[Path, int]:
    """Write ``root/<site>/codebook.toml`` from a filled-in mapping sheet.

    Parameters
    ----------
    sheet : Path
        The CSV ``lacrima sites new --mapping-sheet`` wrote, with ``study_variable`` filled
        in where the suggestion is wrong or missing: a study variable, ``identifying`` or
        ``-`` (not in the study); an empty cell takes the suggestion. Its ``.json`` companion
        must be beside it.
    root : Path
        The sites folder holding ``study.toml`` and the site's draft folder.

    Returns
    -------
    (Path, int)
        The codebook written and the number of TODOs left in it.

    Raises
    ------
    MappingError
        One line per problem (file, row, column, value): an unknown study variable or
        field, a field or study variable paired twice, a study variable paired with no field,
        an answer without a study value. Nothing is written.
    OnboardingError
        No sheet, no companion, no site folder, or a codebook a person has edited.
    """
    sheet, root = Path(sheet), Path(root)
    if not sheet.is_file():
        raise OnboardingError(f"{sheet}: no such file")
    companion = _companion(sheet)
    try:
        meta = json.loads(companion.read_text(encoding="utf-8"))
        source = Source(**{**meta["source"],
                           "fields": [NativeField(**f) for f in meta["source"]["fields"]],
                           "extras": [NativeField(**f) for f in meta["source"]["extras"]]})
        code, language = meta["site"], meta["language"]
    except FileNotFoundError:
        raise OnboardingError(f"{sheet}: {companion.name} is not beside it; `lacrima sites new "
                              "--mapping-sheet` writes the two, keep them in one folder") from None
    except (ValueError, KeyError, TypeError):
        raise OnboardingError(f"{companion}: not what `lacrima sites new --mapping-sheet` "
                              "wrote; draft the sheet again") from None
    folder = root / code
    book = folder / "codebook.toml"
    if not (folder / SITE_FILE).is_file():
        raise OnboardingError(f"{folder}: no {SITE_FILE}; the sheet is for site {code!r} of "
                              "another sites folder (pass --sites)")
    if book.exists() and "written by `lacrima sites" not in book.read_text(
            encoding="utf-8").split("\n", 1)[0]:
        raise OnboardingError(f"{book}: edited by hand (its first line no longer says lacrima "
                              "wrote it); apply-mapping never overwrites a person's codebook")
    variables = {k: dict(v) for k, v in load_study(root).variables.items()}
    mapping, answers, ident, errors = _pairing(sheet, _read_sheet(sheet), source, variables,
                                               language or "en")
    if errors:
        raise MappingError(errors)
    text, todo = render_codebook(code, source, variables,
                                 language or TODO + ": language code, e.g. de", mapping=mapping,
                                 answers=answers, identifying=ident,
                                 origin=f"written by `lacrima sites apply-mapping` ({sheet.name})")
    tmp = book.with_name(book.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(book)
    return book, todo


def draft_site(code: str, tool: str, source_path: Path, root: Path, *, role: str = "replication",
               country: str = "", language: str = "", published_n: int | None = None,
               mapping_sheet: Path | None = None) -> tuple[Path, int]:
    """Write a draft ``root/<code>/`` (site.toml and codebook.toml) from a tool's dictionary.

    Parameters
    ----------
    code : str
        Site code and folder name (lower case letters, digits, ``_`` or ``-``).
    tool : {"redcap", "qualtrics", "spss"}
    source_path : Path
        REDCap data dictionary (.csv), Qualtrics survey (.qsf) or SPSS data file (.sav).
    root : Path
        The sites folder holding ``study.toml``.
    role : {"original", "replication"}
    country, language : str
        Written as given; left as TODO when empty. ``language`` (en, it, he, de) also picks
        the words of ``common_labels``: yes/no labels, answer labels, hints.
    published_n : int, optional
        The published (or planned) sample size; a TODO when not given.
    mapping_sheet : Path, optional
        Also write this mapping sheet (.csv) for a person to fill in, then
        :func:`apply_mapping` (``lacrima sites apply-mapping``).

    Returns
    -------
    (Path, int)
        The new folder and the number of TODOs left to a person.

    Raises
    ------
    OnboardingError
        Unknown tool or role, a bad code, an existing folder or sheet, or a source that is
        not the tool's dictionary.
    """
    root, source_path = Path(root), Path(source_path)
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", code):
        raise OnboardingError(f"site code {code!r}: expected lower-case letters, digits, '_' or "
                              "'-', starting with a letter (e.g. de)")
    if role not in ROLES:
        raise OnboardingError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    readers = {"redcap": read_redcap_dictionary, "qualtrics": read_qualtrics_survey,
               "spss": read_spss_dictionary}
    if tool not in readers:
        raise OnboardingError(f"tool {tool!r}: expected one of {', '.join(readers)}")
    if not source_path.is_file():
        raise OnboardingError(f"{source_path}: no such file")
    folder = root / code
    if folder.exists():
        raise OnboardingError(f"{folder} already exists; a draft never overwrites a site folder")
    if mapping_sheet is not None:
        mapping_sheet = Path(mapping_sheet)
        if mapping_sheet.suffix.lower() != ".csv":
            raise OnboardingError(f"{mapping_sheet}: expected a .csv file name for the sheet")
        for path in (mapping_sheet, _companion(mapping_sheet)):
            if path.exists():
                raise OnboardingError(f"{path} already exists; a draft never overwrites a sheet")
    words = language or "en"
    source = (read_redcap_dictionary(source_path, words) if tool == "redcap"
              else readers[tool](source_path))
    study = load_study(root)
    variables = {k: dict(v) for k, v in study.variables.items()}
    book, todo = render_codebook(code, source, variables,
                                 language or TODO + ": language code, e.g. de")
    todo += sum(1 for v in (country, language, published_n) if not v)
    n = _q(published_n) if published_n else _q(TODO + ": published (or planned) sample size")
    site = "\n".join([
        f"# Site {code!r}: DRAFT written by `lacrima sites new` from {source_path.name}.",
        "[site]", f"code = {_q(code)}", f"country = {_q(country or TODO + ': country')}",
        f"language = {_q(language or TODO + ': language code, e.g. de')}", f"role = {_q(role)}",
        'reference = ""', f"published_n = {n}",
        'codebook = "codebook.toml"', "",
    ])
    folder.mkdir(parents=True)
    (folder / SITE_FILE).write_text(site, encoding="utf-8")
    (folder / "codebook.toml").write_text(book, encoding="utf-8")
    if mapping_sheet is not None:
        write_mapping_sheet(mapping_sheet, code, source, variables, language)
    return folder, todo
