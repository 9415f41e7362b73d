"""Messages in the site's language: gettext catalogs, rendered at the edge.

A finding keeps its English text (the JSON, stable check names) and, for each text made from a
message id, the id and its parameters (``Msg``). The terminal, the quarantine report, the
notification and the portal's pages render them through ``translator(language)`` in the
``language`` of the site's ``site.toml``; English is the fallback for a language or a message
without a translation. Translating never changes a check's outcome or its JSON.

Catalogs are gettext ``.po`` files, ``src/lacrima/locale/<lang>/LC_MESSAGES/lacrima.po``,
compiled in memory by Babel the first time a language is used (a few milliseconds; no ``.mo``
file to build or to keep in step). ``tests/test_i18n.py`` checks that every message id of the
code has a translation in every language, with the same ``{placeholders}``.
"""

from __future__ import annotations

import gettext
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LANGUAGES = ("en", "it", "he", "de")
"""Languages with a catalog; English is the messages' own language (no catalog)."""

RTL = frozenset({"he"})
"""Languages written right to left (HTML ``dir="rtl"``). In their texts each value (a column
or file name, a count, an answer) is wrapped in Unicode's first-strong isolate (U+2068 ...
U+2069), so "'Q14_3' [item_03]" keeps its own order inside a Hebrew sentence."""

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "lacrima"

# Babel extraction keywords: msg("...", **params) and N_("...") (a constant message id).
KEYWORDS = {"msg": (1,), "N_": (1,)}


def N_(text: str) -> str:
    """Mark a constant English text as a message id (it is translated where it is shown)."""
    return text


@dataclass(frozen=True)
class Msg:
    """A message id and its parameters: the English text is ``msgid.format(**params)``.

    A parameter may itself be a ``Msg`` (translated the same way) or any value (shown as is:
    column names, counts, the site's own answer labels).
    """

    msgid: str
    params: tuple = ()

    def render(self, tr: gettext.NullTranslations | None = None, leaf=None) -> str:
        """The text in ``tr``'s language (English without one); ``leaf`` is applied to each
        value that is not a message (to clean it, or to isolate it in right-to-left text)."""
        text = tr.gettext(self.msgid) if tr is not None else self.msgid
        values = {k: (v.render(tr, leaf) if isinstance(v, Msg) else
                      leaf(v) if leaf is not None else v) for k, v in self.params}
        try:
            return text.format(**values)
        except (KeyError, IndexError, ValueError):   # a broken translation: the English
            return self.msgid.format(**values)

    def __str__(self) -> str:
        return self.render()

    def to_dict(self) -> dict:
        """``{"id": msgid, "params": {...}}`` (a parameter that is a message: the same shape)
        for a report's JSON; ``Msg.from_dict`` reads it back."""
        return {"id": self.msgid, "params": {
            k: v.to_dict() if isinstance(v, Msg) else
            v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
            for k, v in self.params}}

    @classmethod
    def from_dict(cls, d: dict) -> "Msg":
        return cls(str(d["id"]), tuple(sorted(
            (k, cls.from_dict(v) if isinstance(v, dict) else v)
            for k, v in (d.get("params") or {}).items())))


def msg(msgid: str, **params) -> Msg:
    """A message id with its parameters (see ``Msg``).

    >>> str(msg("{n} row(s) of {file}", n=2, file="'a.csv'"))
    "2 row(s) of 'a.csv'"
    >>> translator("it").gettext("what to do")
    'cosa fare'
    """
    return Msg(msgid, tuple(sorted(params.items())))


def language(code: str | None) -> str:
    """The catalog language for a site's ``language`` (``it``, ``it_IT``, ``he-IL``), else ``en``.

    >>> language("he-IL"), language("fr"), language(None)
    ('he', 'en', 'en')
    """
    base = str(code or "").replace("-", "_").split("_")[0].lower()
    return base if base in LANGUAGES else "en"


def direction(code: str | None) -> str:
    """``rtl`` for a language written right to left, else ``ltr`` (HTML ``dir``)."""
    return "rtl" if language(code) in RTL else "ltr"


def isolator(code: str | None):
    """A function that makes a value safe to place inside a sentence of ``code``'s language:
    in a right-to-left language, the value as a Unicode bidi isolate (right to left for a
    Hebrew answer, else left to right: a column or file name, a list of numbers, which must
    not be reordered); elsewhere, the value as text."""
    import unicodedata

    def leaf(v) -> str:
        text = str(v)
        if not text:
            return text
        rtl = any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)
        return ("\u2068" if rtl else "\u2066") + text + "\u2069"

    return leaf if language(code) in RTL else str


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def translator(code: str | None) -> gettext.NullTranslations:
    """The translations of one language (``language(code)``); English: the texts as written.

    Parameters
    ----------
    code : str
        A site's ``language`` (``site.toml``) or a language code; unknown codes give English.

    Returns
    -------
    gettext.NullTranslations
        ``gettext(text)`` gives the translation of a message id, or the id itself when the
        catalog has none. The portal uses it for its pages (``{{ _("...") }}`` in Jinja).
    """
    lang = language(code)
    path = po_path(lang)
    if lang == "en" or not path.exists():
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with open(path, "rb") as fh:
        catalog = read_po(fh, locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def gettext_for(code: str | None):
    """``translator(code).gettext``: the one function a template needs as ``_``."""
    return translator(code).gettext
