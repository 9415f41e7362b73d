"""Site codebooks: how one site's native drops map onto the canonical variables.

A codebook is data (``sites/<code>/codebook.toml``, schema in ``sites/README.md``);
this module only reads and checks it. Nothing here knows any site's column names or
labels, so a fourth site is a new folder, not a code change.
"""

from __future__ import annotations

import re

import tomllib
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from lacrima.study import Site, Study, sha256_file

FORMAT_KINDS: tuple[str, ...] = ("qualtrics_csv", "csv", "xlsx", "sav", "redcap_csv")
"""File kinds a codebook may declare. ``qualtrics_csv`` is a CSV with header rows 2-3;
``redcap_csv`` a REDCap export (raw: field names and codes; labels: field labels and choice
labels), whose ``redcap_*``, ``*_complete``, ``*_timestamp`` and checkbox ``field___code``
columns are tool metadata unless the codebook maps them."""

VALUE_STYLES: tuple[str, ...] = ("labels", "codes")
"""``labels``: cells hold answer text; ``codes``: cells hold numeric codes (SPSS)."""

TEXT_KINDS = frozenset({"qualtrics_csv", "csv", "redcap_csv"})


# An ID that is a whole number, however written: "00017", "17", "17.0".
_NUMERIC_ID = re.compile(r"0*(\d+)(?:\.0*)?")


class CodebookError(ValueError):
    """A codebook file that is inconsistent (configuration error, not a data error)."""


def normalise_label(text: str) -> str:
    """Comparison key for an answer label.

    Unicode NFC (an Italian "Sì" may arrive composed or decomposed), surrounding
    whitespace removed, case folded: a data manager's "sì " is still "Sì".
    """
    return unicodedata.normalize("NFC", str(text)).strip().casefold()


@dataclass(frozen=True)
class FileFormat:
    """One kind of file a site may send (a ``[[formats]]`` entry).

    Parameters
    ----------
    kind : {"qualtrics_csv", "csv", "xlsx", "sav", "redcap_csv"}
    extensions : tuple of str
        Lower-case file extensions with the dot (``".csv"``).
    encodings : tuple of str
        Text encodings tried in order (text kinds only); the first that decodes wins.
    write_encoding : str
        Encoding synthetic drops are written in.
    delimiter, decimal : str
        Field separator and decimal mark.
    header_rows : int
        Rows above the first data row, including the names row (0 for .sav).
    date_format : str
        ``strptime`` format of date cells stored as text.
    values : {"labels", "codes"}
    sheet : str
        Worksheet name (xlsx); empty means the first sheet.
    """

    kind: str
    extensions: tuple[str, ...]
    encodings: tuple[str, ...] = ("utf-8-sig",)
    write_encoding: str = "utf-8"
    delimiter: str = ","
    decimal: str = "."
    header_rows: int = 1
    date_format: str = "%Y-%m-%d"
    values: str = "labels"
    sheet: str = ""


@dataclass(frozen=True)
class Scale:
    """Answer scale: canonical values, native labels and native numeric codes, in step.

    Several labels may map to one value (an attention item: one right answer, four
    wrong ones); writing a value uses its first label.
    """

    name: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]
    native_codes: tuple[Any, ...]
    missing_codes: tuple[float, ...] = ()

    def value_of_label(self, label: str) -> Any:
        """Canonical value for a native label; ``KeyError`` when the label is not in the scale."""
        return self._by_label[normalise_label(label)]

    def value_of_code(self, code: float) -> Any:
        """Canonical value for a native numeric code; ``KeyError`` when unknown."""
        return self._by_code[float(code)]

    def label_of(self, value: Any) -> str:
        return self.labels[self._first_index(value)]

    def code_of(self, value: Any) -> Any:
        return self.native_codes[self._first_index(value)]

    def has_value(self, value: Any) -> bool:
        return any(_same(v, value) for v in self.values)

    def _first_index(self, value: Any) -> int:
        for i, v in enumerate(self.values):
            if _same(v, value):
                return i
        raise KeyError(f"value {value!r} is not in scale {self.name!r}")

    @cached_property
    def _by_label(self) -> Mapping[str, Any]:
        return {normalise_label(lab): v for lab, v in zip(self.labels, self.values)}

    @cached_property
    def _by_code(self) -> Mapping[float, Any]:
        # Only numeric codes: a labels-only scale (codes default to its values, such as
        # "woman" or true) has no numeric code, so a stray 1 is an unknown answer.
        return {float(c): v for c, v in zip(self.native_codes, self.values)
                if isinstance(c, (int, float)) and not isinstance(c, bool)}


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a bool scale must not match a likert 1 and vice versa.
    return type(a) is type(b) and a == b or (
        not isinstance(a, bool) and not isinstance(b, bool)
        and isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
    )


@dataclass(frozen=True)
class ColumnSpec:
    """Where one canonical variable lives in the native file."""

    canonical: str
    column: str
    scale: str = ""
    text: str = ""
    import_id: str = ""
    missing_codes: tuple[float, ...] = ()
    numeric: bool = False


@dataclass(frozen=True)
class ExtraColumn:
    """A known non-canonical column (tool metadata); ``synth`` says how to fake it."""

    column: str
    text: str = ""
    import_id: str = ""
    synth: str = "blank"


@dataclass(frozen=True)
class Codebook:
    """One site's codebook (``sites/<code>/codebook.toml``), read-only.

    Parameters
    ----------
    site : str
        Site code.
    format : str
        Kind of the site's primary file format (the first ``[[formats]]`` entry).
    id_column : str
        Native name of the participant ID column.
    identifying_columns : tuple of str
        Native names of columns removed at intake without reading their values.
    sha256 : str
        SHA-256 of the codebook file, for provenance.
    formats : tuple of FileFormat
        Every file kind the site may send; the first is the primary one.
    columns : mapping of str to ColumnSpec
        Canonical variable -> native column, in file order.
    scales : mapping of str to Scale
    extra_columns : tuple of ExtraColumn
    file_order : tuple of str
        Native columns that lead the file, in order (e.g. Qualtrics metadata).
    ids, synthetic : mapping
        Shape of synthetic IDs and the mess the generator plants.
    language : str
    path : Path
    """

    site: str
    format: str
    id_column: str
    identifying_columns: tuple[str, ...]
    sha256: str
    formats: tuple[FileFormat, ...] = field(repr=False, default=())
    columns: Mapping[str, ColumnSpec] = field(repr=False, default_factory=dict)
    scales: Mapping[str, Scale] = field(repr=False, default_factory=dict)
    extra_columns: tuple[ExtraColumn, ...] = field(repr=False, default=())
    file_order: tuple[str, ...] = field(repr=False, default=())
    ids: Mapping[str, Any] = field(repr=False, default_factory=dict)
    synthetic: Mapping[str, Any] = field(repr=False, default_factory=dict)
    language: str = ""
    path: Path | None = None
    id_pattern: str = ""        # regular expression a normalised ID must match in full

    def normalise_ids(self, ids) -> tuple["pd.Series", tuple[int, ...]]:
        """IDs as the site means them, and the positions of those not fitting ``id_pattern``.

        Surrounding whitespace is dropped and an ID made of digits is compared as a number
        (``"00001"``, ``"1"`` and ``1.0`` are one participant: SPSS and spreadsheets turn one
        into the other). Missing IDs stay missing.

        Examples
        --------
        >>> import pandas as pd
        >>> cb = Codebook("xx", "csv", "id", (), "", id_pattern=r"\\d{1,4}")
        >>> ids, bad = cb.normalise_ids(pd.Series([" 00001 ", "1.0", "A7", None]))
        >>> ids.tolist()[:3], bad
        (['1', '1', 'A7'], (2,))
        """
        import pandas as pd

        def one(value):
            text = str(value).strip()
            digits = _NUMERIC_ID.fullmatch(text)
            return (digits.group(1).lstrip("0") or "0") if digits else text
        series = pd.Series(ids).reset_index(drop=True)
        out = series.map(one, na_action="ignore").astype("str")
        bad = ()
        if self.id_pattern:
            pattern = re.compile(self.id_pattern)
            bad = tuple(i for i, v in enumerate(out)
                        if not pd.isna(v) and not pattern.fullmatch(v))
        return out, bad

    def native_name(self, canonical: str) -> str:
        """Native column name of a canonical variable.

        Raises
        ------
        KeyError
            When the codebook does not map ``canonical``.
        """
        try:
            return self.columns[canonical].column
        except KeyError:
            raise KeyError(
                f"codebook of site {self.site!r} ({self.path}) has no column for canonical "
                f"variable {canonical!r}"
            ) from None

    def accepts(self, path: str | Path) -> bool:
        """True when the file's extension is one this site sends (case-insensitive)."""
        return self.format_for(path) is not None

    def format_for(self, path: str | Path) -> FileFormat | None:
        """The declared format whose extensions match ``path``, else None."""
        suffix = Path(path).suffix.lower()
        for fmt in self.formats:
            if suffix in fmt.extensions:
                return fmt
        return None

    def primary_format(self, kind: str | None = None) -> FileFormat:
        """The first declared format, or the first of the given kind."""
        for fmt in self.formats:
            if kind is None or fmt.kind == kind:
                return fmt
        kinds = ", ".join(f.kind for f in self.formats)
        raise ValueError(f"site {self.site!r} declares no {kind!r} format (it declares: {kinds})")

    def scale_of(self, canonical: str) -> Scale | None:
        spec = self.columns.get(canonical)
        return self.scales[spec.scale] if spec is not None and spec.scale else None

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(e.column for e in self.extra_columns)

    def check_against(self, study: Study) -> None:
        """Raise ``CodebookError`` unless every canonical variable of the plan is mapped.

        ``site`` is not mapped: it comes from the site folder, not the file.
        """
        missing = [v for v in study.variables if v not in self.columns]
        if missing:
            raise CodebookError(
                f"codebook {self.path} does not map canonical variable(s) {', '.join(missing)} "
                f"of the study plan {study.path}"
            )
        unknown = [c for c in self.columns if c not in study.variables]
        if unknown:
            raise CodebookError(
                f"codebook {self.path} maps {', '.join(unknown)}, which the study plan "
                f"{study.path} does not define"
            )


def load_codebook(site: Site) -> Codebook:
    """Read and check a site's codebook.

    Parameters
    ----------
    site : lacrima.study.Site
        The site; its ``codebook_path`` names the TOML file.

    Returns
    -------
    Codebook

    Raises
    ------
    CodebookError
        When the file is missing or inconsistent (unknown scale, labels and values of
        different length, unknown format kind, ID column not mapped ...).

    Examples
    --------
    >>> from lacrima.study import load_site
    >>> codebook = load_codebook(load_site("us"))
    >>> codebook.format, codebook.id_column, codebook.native_name("wai_01")
    ('qualtrics_csv', 'ResponseId', 'Q14_1')
    >>> codebook.accepts("export.CSV"), codebook.accepts("export.xlsx")
    (True, False)
    """
    path = Path(site.codebook_path)
    if not path.exists():
        raise CodebookError(f"site {site.code!r} has no codebook: {path} does not exist")
    with open(path, "rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise CodebookError(f"codebook {path} is not valid TOML: {exc}") from None
    return _parse(raw, path, site.code)


def _parse(raw: Mapping[str, Any], path: Path, code: str) -> Codebook:
    def need(table: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in table:
            raise CodebookError(f"codebook {path}: [{where}] needs {key!r}")
        return table[key]

    head = need(raw, "codebook", "top level")
    site = str(need(head, "site", "codebook"))
    if site != code:
        raise CodebookError(f"codebook {path} says site = {site!r} but sits in the folder of "
                            f"site {code!r}")

    formats = []
    for i, f in enumerate(need(raw, "formats", "top level")):
        kind = need(f, "kind", f"formats #{i + 1}")
        if kind not in FORMAT_KINDS:
            raise CodebookError(
                f"codebook {path}: format kind {kind!r} is not one of {FORMAT_KINDS}")
        values = f.get("values", "codes" if kind == "sav" else "labels")
        if values not in VALUE_STYLES:
            raise CodebookError(
                f"codebook {path}: values = {values!r} is not one of {VALUE_STYLES}")
        encodings = tuple(f.get("encodings", ("utf-8-sig",)))
        formats.append(FileFormat(
            kind=kind,
            extensions=tuple(e.lower() for e in need(f, "extensions", f"formats #{i + 1}")),
            encodings=encodings,
            write_encoding=f.get("write_encoding", encodings[0]),
            delimiter=f.get("delimiter", ","),
            decimal=f.get("decimal", "."),
            header_rows=int(f.get("header_rows", 0 if kind == "sav" else 1)),
            date_format=f.get("date_format", "%Y-%m-%d"),
            values=values,
            sheet=f.get("sheet", ""),
        ))
    if not formats:
        raise CodebookError(f"codebook {path} declares no [[formats]]")

    scales = {}
    for name, s in raw.get("scales", {}).items():
        values = tuple(need(s, "values", f"scales.{name}"))
        labels = tuple(str(x) for x in need(s, "labels", f"scales.{name}"))
        native = tuple(s.get("native_codes", values))
        if not (len(values) == len(labels) == len(native)):
            raise CodebookError(
                f"codebook {path}: scale {name!r} has {len(values)} values, {len(labels)} labels "
                f"and {len(native)} native codes; they must be the same length"
            )
        scales[name] = Scale(name=name, values=values, labels=labels, native_codes=native,
                             missing_codes=tuple(float(c) for c in s.get("missing_codes", ())))

    columns = {}
    for canonical, c in need(raw, "columns", "top level").items():
        scale = c.get("scale", "")
        if scale and scale not in scales:
            raise CodebookError(
                f"codebook {path}: column {canonical!r} uses unknown scale {scale!r}")
        columns[canonical] = ColumnSpec(
            canonical=canonical, column=str(need(c, "column", f"columns.{canonical}")), scale=scale,
            text=c.get("text", ""), import_id=c.get("import_id", ""),
            missing_codes=tuple(float(x) for x in c.get("missing_codes", ())),
            numeric=bool(c.get("numeric", False)),
        )
    natives = [c.column for c in columns.values()]
    dupes = sorted({n for n in natives if natives.count(n) > 1})
    if dupes:
        raise CodebookError(f"codebook {path}: native column(s) {dupes} are mapped twice")

    id_column = str(need(head, "id_column", "codebook"))
    if columns.get("participant_id") is None or columns["participant_id"].column != id_column:
        raise CodebookError(
            f"codebook {path}: id_column {id_column!r} must be the column of participant_id"
        )
    identifying = tuple(head.get("identifying_columns", ()))
    clash = sorted(set(identifying) & set(natives))
    if clash:
        raise CodebookError(f"codebook {path}: {clash} are both canonical and identifying")

    extras = tuple(
        ExtraColumn(column=str(e["column"]), text=e.get("text", ""),
                    import_id=e.get("import_id", ""), synth=e.get("synth", "blank"))
        for e in raw.get("extra_columns", ())
    )
    file_order = tuple(head.get("file_order", ()))
    undescribed = [c for c in file_order if c not in natives and c not in {e.column for e in extras}]
    if undescribed:
        raise CodebookError(
            f"codebook {path}: file_order lists {undescribed}, which neither [columns] nor "
            "[[extra_columns]] describe; add an [[extra_columns]] entry for each")
    return Codebook(
        site=site, format=formats[0].kind, id_column=id_column, identifying_columns=identifying,
        sha256=sha256_file(path), formats=tuple(formats), columns=MappingProxyType(columns),
        scales=MappingProxyType(scales), extra_columns=extras,
        file_order=file_order,
        ids=MappingProxyType(dict(raw.get("ids", {}))),
        synthetic=MappingProxyType(dict(raw.get("synthetic", {}))),
        language=head.get("language", ""),
        path=path,
        id_pattern=_id_pattern(head.get("id_pattern", ""), path),
    )


def _id_pattern(pattern: str, path: Path) -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise CodebookError(f"codebook {path}: id_pattern {pattern!r} is not a regular "
                            f"expression ({err})") from None
    return str(pattern)
