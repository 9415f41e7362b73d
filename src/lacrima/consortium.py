"""Synthetic consortia for scale work: K site folders cloned from the real sites' templates.

A consortium is a sites root like ``sites/`` (``study.toml`` plus one folder per site) that
``LACRIMA_SITES`` can point at. Each clone is a copy of one template site (``us``, ``it``,
``il`` in turn): its codebook with the new code, its ``site.toml`` with a new code, role and
published N, and the template's synthetic model (so clones of Israel keep its heterogeneous
effect). Nothing here knows a site's columns or labels: everything is copied from the files.

Roles: ``replications`` clones of templates whose role is the plan's replication role
(the first ones made) are replication sites and every other clone is an original; the
replication assessment compares every replication site with every original
(``replication.replication_table``), the Many Labs design.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lacrima.study import PLAN_FILE, SITE_FILE, Site, load_site, load_sites, load_study, sites_root

DEFAULT_TEMPLATES = ("us", "it", "il")


@dataclass(frozen=True)
class ConsortiumSite:
    """One clone: its code, the template it was made from, its role and N."""

    code: str
    template: str
    role: str
    n: int


@dataclass(frozen=True)
class Consortium:
    """A written consortium: its sites root and one row per site."""

    root: Path
    sites: tuple[ConsortiumSite, ...]

    def to_frame(self) -> pd.DataFrame:
        """Columns ``code``, ``template``, ``role``, ``n``: one row per site, in code order."""
        return pd.DataFrame([vars(s) for s in self.sites], columns=["code", "template", "role", "n"])


def site_code(template: str, index: int, k: int) -> str:
    """Code of clone ``index`` (1-based) of ``k``: the template code and a zero-padded number.

    >>> site_code("us", 7, 125)
    'us007'
    >>> site_code("il", 12, 1000)
    'il0012'
    """
    return f"{template}{index:0{max(3, len(str(k)))}d}"


def _replace_first(text: str, key: str, value: str, where: Path) -> str:
    """Replace the first ``key = ...`` line (the one in the file's first table)."""
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
    if not pattern.search(text):
        raise ValueError(f"{where}: no '{key} = ...' line to set in the template")
    return pattern.sub(f"{key} = {value}", text, count=1)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_consortium(out: Path, k: int, n: int | None = None, *, source: Path | None = None,
                    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
                    replications: int = 1) -> Consortium:
    """Write a sites root with ``k`` site folders cloned from template sites.

    Parameters
    ----------
    out : Path
        Folder to create (must not exist or be empty); it becomes a ``LACRIMA_SITES`` root.
    k : int
        Number of sites, at least 2 (one replication site and at least one original).
    n : int, optional
        Published N written into every clone's ``site.toml`` (what synthetic drops default
        to); default the template's own.
    source : Path, optional
        Sites root holding the plan and the templates; default :func:`lacrima.study.sites_root`.
    templates : tuple of str
        Template site codes, used in turn (clone i is made from ``templates[i % len]``).
    replications : int, default 1
        How many clones get the replication role: the first clones made from a template
        whose role is replication (``templates=("us", "us", "it", "us", "il")`` with
        ``replications=3`` gives 3 replications and 2 originals).

    Returns
    -------
    Consortium
        The root and one :class:`ConsortiumSite` per clone.

    Notes
    -----
    Each clone's files are the template's text with only ``[site] code``, ``role``,
    ``country``, ``published_n`` and ``[codebook] site`` changed, so comments and the
    synthetic overrides stay as the site's data managers wrote them. Every clone is read
    back with :func:`lacrima.study.load_site` and its codebook checked against the plan.
    """
    from lacrima.codebook import load_codebook

    if k < 2:
        raise ValueError(f"a consortium needs at least 2 sites (one replication, one original), got {k}")
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of participants, got {n}")
    if not templates:
        raise ValueError("templates: expected at least one template site code")
    if not 1 <= replications < k:
        raise ValueError(f"replications must be between 1 and k - 1 = {k - 1} (at least one "
                         f"original), got {replications}")
    source = Path(source or sites_root())
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder for the consortium")
    study = load_study(source)
    rep_role, orig_role = study.role_names
    tmpl = {code: load_site(code, source) for code in templates}

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / PLAN_FILE, out / PLAN_FILE)
    made, n_rep = [], 0
    for i in range(k):
        t = tmpl[templates[i % len(templates)]]
        code = site_code(t.code, i + 1, k)
        role = orig_role
        if t.role == rep_role and n_rep < replications:
            role, n_rep = rep_role, n_rep + 1
        _write_clone(t, out / code, code, role, n)
        made.append(ConsortiumSite(code, t.code, role, int(n or t.published_n)))
    if n_rep < replications:
        raise ValueError(f"only {n_rep} clone(s) of a template with role {rep_role!r} among {k}: "
                         f"asked for {replications} replication site(s) (templates: "
                         f"{', '.join(templates)}); no replication site makes no consortium"
                         if n_rep else
                         f"no template has role {rep_role!r}: the consortium would have no "
                         f"replication site (templates: {', '.join(templates)})")
    for s in load_sites(out):
        load_codebook(s).check_against(study)
    return Consortium(out, tuple(sorted(made, key=lambda s: s.code)))


def _write_clone(template: Site, folder: Path, code: str, role: str, n: int | None) -> None:
    folder.mkdir(parents=True)
    site_file = template.folder / SITE_FILE
    text = site_file.read_text(encoding="utf-8")
    text = _replace_first(text, "code", _toml_str(code), site_file)
    text = _replace_first(text, "role", _toml_str(role), site_file)
    text = _replace_first(text, "country", _toml_str(f"{template.country} (synthetic clone {code})"),
                          site_file)
    if n is not None:
        text = _replace_first(text, "published_n", str(int(n)), site_file)
    (folder / SITE_FILE).write_text(text, encoding="utf-8")
    book = template.codebook_path.read_text(encoding="utf-8")
    book = _replace_first(book, "site", _toml_str(code), template.codebook_path)
    (folder / template.codebook_path.name).write_text(book, encoding="utf-8")
    site = load_site(code, folder.parent)
    if site.code != code or site.role != role:
        raise ValueError(f"clone {folder} reads back as {site.code!r}/{site.role!r}, "
                         f"expected {code!r}/{role!r}")


def _one_drop(args: tuple) -> tuple[str, str]:
    root, code, out, n, seed, id_offset, fmt = args
    from lacrima.synth import write_drop

    site = load_site(code, root)
    path = write_drop(site, load_study(root), Path(out) / code, n=n, seed=seed,
                      id_offset=id_offset, format=fmt)
    return code, str(path)


def write_consortium_drops(root: Path, out: Path, n: int | None = None, seed: int | None = None,
                           *, id_offset: int = 0, sites: tuple[str, ...] | None = None,
                           text_formats: bool = False, workers: int = 1) -> dict[str, Path]:
    """One synthetic drop per site of a consortium, in each site's native format.

    Parameters
    ----------
    root : Path
        The consortium's sites root.
    out : Path
        Drops go to ``out/<code>/``.
    n : int, optional
        Participants per drop; default each site's published N.
    seed : int, optional
        Base seed; site i (in code order) uses ``seed + i`` so sites differ. Default the
        plan's seed.
    id_offset : int
        First ID number minus one (a second batch of a site uses fresh IDs).
    sites : tuple of str, optional
        Only these site codes.
    text_formats : bool
        Use a site's first text format (``csv``) when it also sends one, instead of its
        primary format: workbooks are slow to write and read at thousands of sites.
    workers : int
        Processes writing drops in parallel.

    Returns
    -------
    dict
        Site code -> path of its drop.
    """
    from lacrima.codebook import load_codebook

    study = load_study(root)
    base = int(study.raw["study"]["seed"] if seed is None else seed)
    all_sites = load_sites(root)
    jobs = []
    for i, s in enumerate(all_sites):
        if sites is not None and s.code not in sites:
            continue
        fmt = None
        if text_formats:
            kinds = [f.kind for f in load_codebook(s).formats]
            fmt = "csv" if "csv" in kinds else None
        jobs.append((str(root), s.code, str(out), n, base + i, id_offset, fmt))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_one_drop, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        done = [_one_drop(j) for j in jobs]
    return {code: Path(p) for code, p in done}
