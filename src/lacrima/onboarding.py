"""Draft a new site folder from the survey tool the site already uses.

``draft_site`` reads a REDCap data dictionary (CSV), a Qualtrics survey file (.qsf, JSON) or
an SPSS data file (.sav, its dictionary only) and writes ``sites/<code>/site.toml`` and
``codebook.toml``:

- every native field is listed: mapped to a canonical variable, as an identifying column,
  or as an ``[[extra_columns]]`` entry with its label; every choice field becomes a scale
  with its labels and codes;
- identifying fields are pre-marked: REDCap's "Identifier?" column (and e-mail / phone
  validation), Qualtrics' recipient, IP and location metadata, and any field whose name
  looks identifying (``lacrima.native.IDENTIFYING_NAME``);
- a canonical mapping is filled only where it is certain: the field's name equals the
  variable's name up to case, separators and leading zeros (``wai_1`` is ``wai_01``), or its
  label equals the plan's label; the tool's own ID and completion date columns;
- everything else is a TODO: a commented line under ``[columns]`` per unmapped variable,
  and ``"TODO: ..."`` text where a value is needed. ``lacrima sites check`` lists what is left.

The source file is configuration (a dictionary), never participant data: an SPSS file is
opened for its dictionary only.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lacrima.contract import ROLES
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


class OnboardingError(ValueError):
    """The source is not the tool's dictionary (the message names the file and what it expected)."""


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


def read_redcap_dictionary(path: Path) -> Source:
    """Fields of a REDCap data dictionary (the CSV "Download the Data Dictionary" gives).

    The first field is the record ID (REDCap's rule). Radio and dropdown fields become
    choice fields; yesno / truefalse are booleans coded 1 / 0; checkbox fields export one
    ``field___code`` column per choice (tool metadata unless mapped); descriptive fields
    have no column.
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
        if form and form not in forms:
            forms.append(form)
        if ftype == "descriptive":
            continue
        f = NativeField(name=name, label=label,
                        identifying=ident or validation in ("email", "phone"))
        if ftype in ("radio", "dropdown"):
            f.kind = "choice"
            f.codes, f.labels = _redcap_choices(row[REDCAP_COLUMNS["choices"]], name, path)
        elif ftype in ("yesno", "truefalse"):
            f.kind = "bool"
            f.codes, f.labels = [1, 0], (["Yes", "No"] if ftype == "yesno" else ["True", "False"])
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
                                          import_id=f"{qid}_{c}"))
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


def _certain_mapping(source: Source, variables: dict) -> dict[str, NativeField]:
    """canonical -> field, only where the name or the label leaves no doubt (each field once)."""
    out: dict[str, NativeField] = {}
    by_id = {f.name: f for f in source.fields}
    if source.id_column in by_id:
        out["participant_id"] = by_id[source.id_column]
    if source.completed_column in by_id and "completed_at" in variables:
        out["completed_at"] = by_id[source.completed_column]
    used = {f.name for f in out.values()}
    for canonical, var in variables.items():
        if canonical in out:
            continue
        hits = [f for f in source.fields if f.name not in used and not f.identifying and (
            _norm_name(f.name) == _norm_name(canonical)
            or (var.get("label") and _norm_label(f.label) == _norm_label(var["label"])))]
        if len(hits) == 1:
            out[canonical] = hits[0]
            used.add(hits[0].name)
    return out


def _scale_values(f: NativeField, var: dict | None) -> tuple[list[Any], bool]:
    """Canonical values for a choice field, and whether they are certain."""
    if f.kind == "bool" and (var is None or var["type"] == "bool"):
        return [c == 1 for c in f.codes], True
    if var is not None and var["type"] == "category":
        levels = {_norm_label(lev): lev for lev in var.get("levels", ())}
        if all(_norm_label(lab) in levels for lab in f.labels):
            return [levels[_norm_label(lab)] for lab in f.labels], True
        return [f"{TODO}: one of {', '.join(var.get('levels', ()))}" for _ in f.labels], False
    if var is not None and var["type"] == "bool":
        return [f"{TODO}: true or false" for _ in f.labels], False
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


def render_codebook(code: str, source: Source, variables: dict, language: str) -> tuple[str, int]:
    """The draft ``codebook.toml`` text and the number of TODOs in it."""
    from lacrima.native import IDENTIFYING_NAME

    mapping = _certain_mapping(source, variables)
    mapped_fields = {f.name: c for c, f in mapping.items()}
    ident = [f.name for f in (*source.fields, *source.extras)
             if f.name not in mapped_fields and (f.identifying or IDENTIFYING_NAME.search(f.name))]
    todo = 0
    lines = [f"# Codebook of site {code!r}: DRAFT written by `lacrima sites new` from its "
             f"{source.tool} dictionary.",
             "# Lines marked TODO are left to a person; `lacrima sites check` lists what remains.",
             "# Every native field is listed: under [columns] (canonical), in identifying_columns,",
             "# or under [[extra_columns]] (kept out of the analysis, no warning).", "",
             "[codebook]", f"site = {_q(code)}", f"language = {_q(language)}"]
    id_column = source.id_column or TODO
    if not source.id_column:
        todo += 1
        lines.append("# TODO: id_column is the native column of participant_id")
    lines += [f"id_column = {_q(id_column)}", f"identifying_columns = {_list(ident)}"]
    if source.file_order:
        lines.append(f"file_order = {_list(source.file_order)}")
    lines += ["", *source.format_lines, "", *source.ids_lines, ""]
    scales: dict[str, str] = {}
    for f in source.fields:
        if f.kind not in ("choice", "bool") or f.name in ident:
            continue
        var = variables.get(mapped_fields.get(f.name, ""))
        values, certain = _scale_values(f, var)
        name = _scale_name(f.name)
        scales[f.name] = name
        lines.append(f"[scales.{name}]" + (
            "" if certain else "  # TODO: check values (the canonical value of each label)"))
        todo += 0 if certain else 1
        lines += [f"values = {_list(values)}", f"labels = {_list(f.labels)}",
                  f"native_codes = {_list(f.codes)}"]
        if f.missing_codes:
            lines.append(f"missing_codes = {_list(f.missing_codes)}")
    lines += ["", "[columns]"]
    for canonical, var in variables.items():
        f = mapping.get(canonical)
        if f is None:
            todo += 1
            scale = ', scale = "..."' if var["type"] in ("bool", "category", "likert") else ""
            lines.append(f'# TODO {canonical} = {{ column = "..."{scale} }}'
                         f"  # {var.get('label', '')} ({var['type']})")
            continue
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
    extras = [f for f in (*source.fields, *source.extras)
              if f.name not in mapped_fields and f.name not in ident]
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


def draft_site(code: str, tool: str, source_path: Path, root: Path, *, role: str = "replication",
               country: str = "", language: str = "") -> tuple[Path, int]:
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
        Written as given; left as TODO when empty.

    Returns
    -------
    (Path, int)
        The new folder and the number of TODOs left to a person.

    Raises
    ------
    OnboardingError
        Unknown tool or role, a bad code, an existing folder, or a source that is not the
        tool's dictionary.
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
    source = readers[tool](source_path)
    study = load_study(root)
    variables = {k: dict(v) for k, v in study.variables.items()}
    book, todo = render_codebook(code, source, variables,
                                 language or TODO + ": language code, e.g. de")
    todo += sum(1 for v in (country, language) if not v) + 1   # published N is always a person's
    site = "\n".join([
        f"# Site {code!r}: DRAFT written by `lacrima sites new` from {source_path.name}.",
        "[site]", f"code = {_q(code)}", f"country = {_q(country or TODO + ': country')}",
        f"language = {_q(language or TODO + ': language code, e.g. de')}", f"role = {_q(role)}",
        'reference = ""', f"published_n = {_q(TODO + ': published (or planned) sample size')}",
        'codebook = "codebook.toml"', "",
    ])
    folder.mkdir(parents=True)
    (folder / SITE_FILE).write_text(site, encoding="utf-8")
    (folder / "codebook.toml").write_text(book, encoding="utf-8")
    return folder, todo
