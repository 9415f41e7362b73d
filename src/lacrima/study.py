"""The study plan and the sites, read from ``sites/`` (data, not code).

``sites/study.toml`` is the plan (variables, scores, exclusions, analyses, pooling,
replication rule, synthetic model). Each ``sites/<code>/`` folder holding a
``site.toml`` is a site; a new country is a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

PLAN_FILE = "study.toml"
SITE_FILE = "site.toml"
# A site's role is one of these (sites/README.md): an original study, or a replication of
# it. Replication assessment compares every replication site with every original.
ROLES = ("original", "replication")


def sites_root() -> Path:
    """Folder holding ``study.toml`` and the site folders.

    ``LACRIMA_SITES`` when set, else the repository's ``sites/`` next to ``src/``,
    else ``./sites``.
    """
    env = os.environ.get("LACRIMA_SITES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "sites"
    return repo if (repo / PLAN_FILE).exists() else Path.cwd() / "sites"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _freeze(obj: Any) -> Any:
    if isinstance(obj, dict):
        return MappingProxyType({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return tuple(_freeze(v) for v in obj)
    return obj


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class Study:
    """The study plan (``sites/study.toml``), read-only.

    Attributes mirror the file's tables; ``sha256`` is the file's hash for provenance.
    """

    path: Path
    sha256: str
    raw: Mapping[str, Any] = field(repr=False)

    def __reduce__(self):
        # Travels (to a worker process) as its file's path and hash: its frozen tables do
        # not pickle, and the file is what the hash vouches for.
        return (_study_at, (str(self.path), self.sha256))

    @property
    def variables(self) -> Mapping[str, Mapping[str, Any]]:
        return self.raw["variables"]

    @property
    def scores(self) -> Mapping[str, Mapping[str, Any]]:
        return self.raw["scores"]

    @property
    def exclusions(self) -> tuple[Mapping[str, Any], ...]:
        return self.raw["exclusions"]

    @property
    def families(self) -> tuple[Mapping[str, Any], ...]:
        return self.raw["families"]

    def family(self, family_id: str) -> Mapping[str, Any]:
        for fam in self.families:
            if fam["id"] == family_id:
                return fam
        raise KeyError(f"family {family_id!r} is not in the study plan {self.path}")

    @property
    def level(self) -> float:
        return float(self.raw["study"]["level"])

    def section(self, name: str) -> Mapping[str, Any]:
        return self.raw.get(name, MappingProxyType({}))

    @property
    def role_names(self) -> tuple[str, str]:
        """The roles of replication sites and of original sites, in that order.

        ``[replication] replication_site_role`` and ``original_site_role`` (default
        ``"replication"`` and ``"original"``, the closed set ``ROLES``).
        """
        cfg = self.section("replication")
        return (str(cfg.get("replication_site_role", "replication")),
                str(cfg.get("original_site_role", "original")))

    def variables_in(self, group: str) -> tuple[str, ...]:
        return tuple(k for k, v in self.variables.items() if v.get("group") == group)


@dataclass(frozen=True)
class Site:
    """One site: ``sites/<code>/site.toml`` plus the path of its codebook."""

    code: str
    folder: Path
    role: str
    country: str
    language: str
    published_n: int
    reference: str
    codebook_path: Path
    sha256: str
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def results_sha256(self) -> str:
        """SHA-256 of what of the site file a site's analysis and its page depend on: code,
        role, country and reference. Not the contact, the language (messages to the site),
        the published N or the synthetic model: editing them recomputes nothing."""
        shown = {"code": self.code, "role": self.role, "country": self.country,
                 "reference": self.reference}
        return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()

    def synthetic(self, study: Study) -> Mapping[str, Any]:
        """The synthetic model for this site: the study's defaults with this site's overrides."""
        base = _thaw(study.section("synthetic"))
        return _freeze(_deep_merge(base, _thaw(self.raw.get("synthetic", {}))))


def _thaw(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _thaw(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [_thaw(v) for v in obj]
    return obj


def load_study(root: Path | None = None) -> Study:
    """Read ``study.toml`` from the sites root."""
    path = Path(root or sites_root()) / PLAN_FILE
    return _load_study_cached(path.resolve(), path.stat().st_mtime_ns)


@cache
def _load_study_cached(path: Path, _mtime: int) -> Study:
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    return Study(path=path, sha256=sha256_file(path), raw=_freeze(raw))


def _study_at(path: str, sha256: str) -> Study:
    study = _load_study_cached(Path(path).resolve(), Path(path).stat().st_mtime_ns)
    if study.sha256 != sha256:
        raise RuntimeError(f"the study plan {path} changed while a run was using it")
    return study


def load_site(code: str, root: Path | None = None) -> Site:
    """Read ``sites/<code>/site.toml``; ``KeyError`` with the known codes when absent."""
    folder = Path(root or sites_root()) / code
    path = folder / SITE_FILE
    if not path.exists():
        known = ", ".join(site_codes(root)) or "none"
        raise KeyError(f"unknown site {code!r}: no {path} (known sites: {known})")
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    meta = raw["site"]
    if meta.get("role") not in ROLES:
        raise ValueError(f"{path}: [site] role = {meta.get('role')!r} is not a role; "
                         f"expected one of {list(ROLES)}")
    return Site(
        code=meta["code"], folder=folder, role=meta["role"], country=meta["country"],
        language=meta["language"], published_n=int(meta["published_n"]),
        reference=meta.get("reference", ""), codebook_path=folder / meta.get("codebook", "codebook.toml"),
        sha256=sha256_file(path), raw=_freeze(raw),
    )


def site_codes(root: Path | None = None) -> tuple[str, ...]:
    """Codes of every site folder, sorted."""
    base = Path(root or sites_root())
    return tuple(sorted(p.name for p in base.iterdir() if (p / SITE_FILE).exists()))


def load_sites(root: Path | None = None) -> tuple[Site, ...]:
    return tuple(load_site(c, root) for c in site_codes(root))
