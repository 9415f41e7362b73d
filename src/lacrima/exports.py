"""Exports for analysts who continue in other tools: SPSS ``.sav`` per site, stacked Parquet.

The analysis-ready data (``SiteAnalysis.data``: pseudonymised IDs, canonical variables,
scores) is written as it is used, with labels: variable labels from the plan
(``sites/study.toml`` [variables] and [scores] ``label``), value labels from the site's
codebook scales (the answer text that site's participants saw) and, for categories
without a codebook scale, the plan's levels.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from lacrima.formula import escape_formula
from lacrima.storage import parquet_frame
from lacrima.study import Site, Study

# SPSS has no boolean type: true/false are stored as 1/0 with value labels.
BOOL_CODES = {True: 1, False: 0}
# SPSS measure level of each plan variable type (sites/study.toml [variables] type).
MEASURE_LEVELS = {"bool": "nominal", "category": "nominal", "string": "nominal",
                  "likert": "ordinal", "integer": "scale", "date": "scale"}
_SPSS_NAME_MAX = 64
_SPSS_LABEL_MAX = 255


class ExportError(ValueError):
    """Data that cannot be written in the requested format (a name SPSS cannot hold ...)."""


def _label(study: Study, name: str) -> str:
    if name in study.variables:
        return str(study.variables[name].get("label", name))
    if name in study.scores:
        return str(study.scores[name].get("label", name))
    if name == "site":
        return "Site code"
    return name


def _bool_label(scale, value: bool) -> str:
    """The codebook's answer text for true/false, when the scale is one answer for each.

    A scale with more answers (an attention item: one right answer, four wrong ones) says
    what was ticked, not what the boolean means; the plain word is used instead.
    """
    if scale is not None and len(scale.values) == 2:
        hits = [lab for v, lab in zip(scale.values, scale.labels)
                if isinstance(v, bool) and v is value]
        if len(hits) == 1:
            return hits[0]
    return str(value).lower()


def category_codes(study: Study, variable: str) -> dict[str, int]:
    """Numeric SPSS codes of a category variable: 1, 2, ... in the plan's level order."""
    levels = study.variables[variable].get("levels", ())
    return {str(level): i for i, level in enumerate(levels, start=1)}


def spss_frame(data: pd.DataFrame, study: Study, site: Site) -> tuple[pd.DataFrame, dict, dict]:
    """The data frame, variable labels and value labels to write as SPSS.

    Parameters
    ----------
    data : DataFrame
        A site's analysis-ready data (not modified).
    study : Study
    site : Site
        Its codebook gives the value labels (native answer text).

    Returns
    -------
    frame : DataFrame
        Numeric columns as float64 (missing as NaN, SPSS system-missing), booleans as 1/0,
        plan categories as codes 1..k (:func:`category_codes`), dates as datetime64, other
        text as str.
    column_labels : dict
        ``column -> label`` (plan labels, at most 255 characters).
    value_labels : dict
        ``column -> {code: label}``.

    Raises
    ------
    ExportError
        When a column name is longer than SPSS allows (64 bytes).
    """
    from lacrima.codebook import load_codebook

    codebook = load_codebook(site)
    out: dict[str, Any] = {}
    value_labels: dict[str, dict[float, str]] = {}
    for col in data.columns:
        if len(col.encode()) > _SPSS_NAME_MAX:
            raise ExportError(f"column {col!r} is longer than SPSS's {_SPSS_NAME_MAX}-byte "
                              "variable name limit")
        s = data[col]
        meta = study.variables.get(col, {})
        scale = codebook.scale_of(col) if col in study.variables else None
        if pd.api.types.is_bool_dtype(s) or meta.get("type") == "bool":
            out[col] = s.astype("boolean").map(BOOL_CODES, na_action="ignore").astype("float64")
            value_labels[col] = {float(code): _bool_label(scale, value)
                                 for value, code in BOOL_CODES.items()}
        elif meta.get("type") == "category":
            codes = category_codes(study, col)
            out[col] = s.astype(object).map(lambda v: codes.get(str(v), np.nan)
                                            if pd.notna(v) else np.nan).astype("float64")
            value_labels[col] = {float(c): (scale.label_of(level) if scale is not None
                                            and scale.has_value(level) else level)
                                 for level, c in codes.items()}
        elif pd.api.types.is_datetime64_any_dtype(s):
            out[col] = pd.to_datetime(s).astype("datetime64[ns]")
        elif pd.api.types.is_numeric_dtype(s):
            out[col] = pd.to_numeric(s, errors="coerce").astype("float64")
            if scale is not None:
                labels = {}
                for value, label in zip(scale.values, scale.labels):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        labels.setdefault(float(value), label)
                if labels:
                    value_labels[col] = labels
        else:
            out[col] = s.astype(object).where(s.notna(), "").astype(str).to_numpy(dtype=object)
    frame = pd.DataFrame(out, index=data.index).reset_index(drop=True)
    column_labels = {c: _label(study, c)[:_SPSS_LABEL_MAX] for c in frame.columns}
    return frame, column_labels, value_labels


def measure_levels(data: pd.DataFrame, study: Study) -> dict[str, str]:
    """SPSS measure level (``nominal``, ``ordinal``, ``scale``) of every column of ``data``.

    Parameters
    ----------
    data : DataFrame
        A site's analysis-ready data.
    study : Study

    Returns
    -------
    dict
        ``column -> level``: a plan variable by its type (:data:`MEASURE_LEVELS`: bool,
        category and string nominal, likert ordinal, integer and date scale); a score
        (a mean or sum of items) scale, unless it is true/false (nominal); any other
        column (``site``) by its dtype: numbers scale, everything else nominal.

    Examples
    --------
    >>> from lacrima.study import load_study
    >>> frame = pd.DataFrame({"gender": ["woman"], "after_happy": [3], "age": [30],
    ...                       "change": [3.2], "site": ["us"]})
    >>> levels = measure_levels(frame, load_study())
    >>> levels["gender"], levels["after_happy"], levels["age"], levels["change"], levels["site"]
    ('nominal', 'ordinal', 'scale', 'scale', 'nominal')
    """
    out = {}
    for col in data.columns:
        kind = study.variables.get(col, {}).get("type")
        if kind in MEASURE_LEVELS:
            out[col] = MEASURE_LEVELS[kind]
        elif pd.api.types.is_bool_dtype(data[col]):
            out[col] = "nominal"
        elif pd.api.types.is_numeric_dtype(data[col]):
            out[col] = "scale"
        else:
            out[col] = "nominal"
    return out


def spss_bytes(data: pd.DataFrame, study: Study, site: Site) -> bytes:
    """A site's analysis-ready data as an SPSS ``.sav`` file, with variable and value labels.

    Parameters
    ----------
    data : DataFrame
        Analysis-ready data of ``site`` (pseudonymised IDs only).
    study : Study
    site : Site

    Returns
    -------
    bytes
        The ``.sav`` file (pyreadstat / ReadStat writer, uncompressed bytecode).

    Notes
    -----
    Missing values are SPSS system-missing; no user-missing codes are declared, because
    the curated data no longer carries the sites' native missing codes. Measure levels
    come from the plan's variable types (:func:`measure_levels`).
    """
    import pyreadstat

    frame, column_labels, value_labels = spss_frame(data, study, site)
    # pyreadstat writes to a path only; the temporary file lives only inside this call.
    fd, tmp = tempfile.mkstemp(suffix=".sav", prefix="lacrima-")
    os.close(fd)
    try:
        pyreadstat.write_sav(frame, tmp, column_labels=column_labels,
                             variable_value_labels=value_labels,
                             variable_measure=measure_levels(data, study),
                             file_label=f"{study.raw['study']['name']} - site {site.code}"[:64])
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def stacked_parquet_bytes(parts: Iterable[pd.DataFrame | bytes], study: Study) -> bytes:
    """The sites' analysis-ready data stacked as Parquet, with the plan's labels in its metadata.

    Parameters
    ----------
    parts : iterable of DataFrame or bytes
        Each site's analysis-ready frame, in site order, or the bytes of a Parquet file
        written from one (as the store keeps it). Bytes are decoded one site at a time, so
        the stacked rows are never all in memory at once, only the compressed files.
    study : Study

    Returns
    -------
    bytes
        A Parquet file (pyarrow), one row group per site. Columns are the union of the
        sites' columns with the dtypes ``pandas.concat`` gives them (nullable integers,
        booleans, strings, dates kept); the schema metadata key ``lacrima.labels`` holds a
        JSON object ``column -> label`` and ``lacrima.plan_sha256`` the plan's hash.

    Notes
    -----
    When every part is Parquet bytes of one schema (the usual case: each site's stored
    frame), the files are copied table by table without a round trip through pandas;
    otherwise each part is brought to the union's columns and dtypes first.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = list(parts)
    if not parts:
        return _write_tables((), study)
    files = [None if isinstance(p, pd.DataFrame) else pq.ParquetFile(io.BytesIO(p)) for p in parts]
    schemas = [None if f is None else f.schema_arrow for f in files]
    if all(s is not None and s.equals(schemas[0], check_metadata=False) for s in schemas):
        return _write_tables((f.read() for f in files), study)
    # The union's columns and dtypes, from empty heads: what pd.concat would give the rows.
    union = pd.concat([p.iloc[:0] if s is None else s.empty_table().to_pandas()
                       for p, s in zip(parts, schemas)], ignore_index=True)

    def table(part) -> pa.Table:
        frame = part if isinstance(part, pd.DataFrame) else parquet_frame(part)
        frame = frame.reindex(columns=union.columns)
        if (frame.dtypes != union.dtypes).any():
            frame = frame.astype(union.dtypes.to_dict())
        return pa.Table.from_pandas(frame, preserve_index=False)

    return _write_tables((table(p) for p in parts), study)


def _write_tables(tables, study: Study) -> bytes:
    """Write Arrow tables of one column set as row groups, under the first table's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    writer = schema = None
    for table in tables:
        if writer is None:
            schema = _with_labels(table.schema, table.column_names, study)
            writer = pq.ParquetWriter(buf, schema)
        writer.write_table(table.cast(schema))
    if writer is None:          # no site: an empty file
        table = pa.Table.from_pandas(pd.DataFrame(), preserve_index=False)
        pq.write_table(table.replace_schema_metadata(
            _with_labels(table.schema, table.column_names, study).metadata), buf)
    else:
        writer.close()
    return buf.getvalue()


def _with_labels(schema, columns: list[str], study: Study):
    import json

    meta = dict(schema.metadata or {})
    meta[b"lacrima.labels"] = json.dumps({c: _label(study, c) for c in columns}).encode()
    meta[b"lacrima.plan_sha256"] = study.sha256.encode()
    return schema.with_metadata(meta)


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """CSV at full precision; text cells that a spreadsheet would run as a formula are escaped."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(escape_formula, na_action="ignore")  # lacrima.formula
    buf = io.StringIO()
    out.to_csv(buf, index=False, float_format="%.17g")
    return buf.getvalue().encode()
