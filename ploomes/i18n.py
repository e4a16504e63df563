"""The interface's language: gettext catalogs and Babel's numbers, money and dates.

Source strings are English (`_("Events")`); `locale/pt_BR/LC_MESSAGES/messages.po` holds
their Portuguese. English needs no catalog: gettext falls back to the source string.
`PLOOMES_LANGUAGE` picks the language (`pt_BR` by default, `en`); `pseudo` shows the
Portuguese wrapped in ⟦…⟧, so text that skipped the catalog stands out (tests, translators).

The language is a setting of the process, not of a session: `activate()` sets it for
everyone, and the dashboard calls it with the settings at every page run.
"""

from __future__ import annotations

import gettext
import io
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_datetime as _babel_datetime
from babel.dates import format_timedelta, get_day_names, get_month_names
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal

from ploomes.config import DEFAULT_LANGUAGE, LANGUAGES

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "messages"
PSEUDO_OPEN, PSEUDO_CLOSE = "⟦", "⟧"
# Babel locale of each language: the pseudo language formats like Brazil
_LOCALES = {"pt_BR": "pt_BR", "en": "en", "pseudo": "pt_BR"}
_PATTERNS = {  # dates and times as each language writes them (CLDR pattern syntax)
    "pt_BR": ("dd/MM/yyyy", "dd/MM/yyyy HH:mm", "dd/MM/yyyy HH:mm:ss"),
    "en": ("yyyy-MM-dd", "yyyy-MM-dd HH:mm", "yyyy-MM-dd HH:mm:ss"),
}

_PLACEHOLDER = re.compile(r"\{(\w*)\}")

_active = DEFAULT_LANGUAGE


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark only"
    """Mark a string for the catalog without translating it (module constants)."""
    return message


def catalog_path(language: str = "pt_BR") -> Path:
    """Return the .po file of a language."""
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def compile_catalog(po_path: Path, pseudo: bool = False) -> gettext.NullTranslations:
    """Read a .po file and return its translations, compiled in memory.

    Compiling at start instead of committing a .mo leaves nothing to go stale on a
    fresh clone or after `pybabel update`; parsing a few hundred messages takes ms.
    Untranslated and fuzzy entries fall back to the English source string.
    """
    with po_path.open("rb") as fh:
        catalog = read_po(fh, locale="pt_BR", domain=DOMAIN)
    if pseudo:
        for message in catalog:
            if not message.id:
                continue  # the header
            if isinstance(message.string, tuple | list):
                message.string = tuple(_wrap(s) for s in message.string)
            else:
                message.string = _wrap(message.string or "")
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def catalog_problems(po_path: Path, root: Path) -> list[str]:
    """Return what is wrong with a catalog for the code under `root` (empty: all good).

    Every string marked in the code (babel.cfg: `_()`, `ngettext()`, `N_()`) must have a
    translation that is not fuzzy and keeps the source's `{placeholders}`.
    """
    with (root / "babel.cfg").open(encoding="utf-8") as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    with po_path.open("rb") as fh:
        catalog = read_po(fh, locale="pt_BR", domain=DOMAIN)
    problems: dict[str, str] = {}
    for found in extract_from_dir(str(root), method_map, options_map,
                                  keywords=DEFAULT_KEYWORDS):
        source = found[2]
        key = source[0] if isinstance(source, tuple) else source
        message = catalog.get(source if isinstance(source, str) else source[0])
        if message is None:
            problems[key] = f"{key!r}: not in the catalog"
            continue
        strings = message.string if isinstance(message.string, tuple | list) else [
            message.string]
        if message.fuzzy or not all(strings):
            problems[key] = f"{key!r}: no translation"
            continue
        wanted = set(_PLACEHOLDER.findall(key))
        for text in strings:
            if set(_PLACEHOLDER.findall(text or "")) != wanted:
                problems[key] = (f"{key!r}: placeholders {sorted(wanted)} but the translation "
                                 f"has {sorted(set(_PLACEHOLDER.findall(text or '')))}")
    return sorted(problems.values())


def _wrap(text: str) -> str:
    return f"{PSEUDO_OPEN}{text}{PSEUDO_CLOSE}" if text else text


@cache
def translations(language: str) -> gettext.NullTranslations:
    """Return the translations of a language (compiled once per process)."""
    if language == "en":
        return gettext.NullTranslations()
    return compile_catalog(catalog_path("pt_BR"), pseudo=language == "pseudo")


def activate(language: str) -> None:
    """Make `language` (one of config.LANGUAGES) the interface's language."""
    global _active
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}")
    _active = language


def language() -> str:
    """Return the active language (pt_BR, en or pseudo)."""
    return _active


def is_english() -> bool:
    """Return whether the interface is in English."""
    return _active == "en"


def _(message: str) -> str:
    """Translate a message into the active language."""
    return translations(_active).gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """Translate a message whose words depend on a count ("1 evento", "2 eventos")."""
    return translations(_active).ngettext(singular, plural, count)


# -- numbers, money, dates --------------------------------------------------------------

def locale() -> Locale:
    """Return the Babel locale of the active language."""
    return Locale.parse(_LOCALES[_active])


def format_number(value: float | int | Decimal, decimals: int | None = None) -> str:
    """Return a number as the language writes it (1.234,5 in Portuguese)."""
    if decimals is None:
        return format_decimal(value, locale=locale())
    pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
    return format_decimal(value, format=pattern, locale=locale())


def format_money(value: float | int | Decimal, currency: str = "BRL") -> str:
    """Return an amount of money (R$ 1.234,56)."""
    return format_currency(value, currency, locale=locale())


def _pattern(kind: int) -> str:
    return _PATTERNS["en" if _active == "en" else "pt_BR"][kind]


def format_datetime(value: datetime, tz: str, seconds: bool = False) -> str:
    """Return a moment in the time zone `tz` (07/12/2026 19:17)."""
    return _babel_datetime(value, _pattern(2 if seconds else 1), tzinfo=ZoneInfo(tz),
                           locale=locale())


def date_pattern(seconds: bool | None = None) -> str:
    """Return the strftime pattern of a date (None), a time to the minute or the second.

    For columns formatted by pandas, whose `.dt.strftime` is much faster than Babel.
    """
    day = "%Y-%m-%d" if _active == "en" else "%d/%m/%Y"
    if seconds is None:
        return day
    return day + (" %H:%M:%S" if seconds else " %H:%M")


def format_ago(seconds: float) -> str:
    """Return how long ago something happened (há 3 minutos)."""
    # Babel rounds to the nearest unit: 59.6 minutes is "há 1 hora"
    return format_timedelta(timedelta(seconds=-seconds), add_direction=True, locale=locale())


def weekday_names() -> list[str]:
    """Return the short weekday names, Monday first (seg, ter, qua…)."""
    names = get_day_names("abbreviated", "format", locale())
    return [names[day].rstrip(".") for day in range(7)]


def month_names(width: Literal["abbreviated", "narrow", "wide"] = "wide") -> list[str]:
    """Return the month names, January first (`abbreviated`: jan, fev…)."""
    names = get_month_names(width, "format", locale())
    return [names[month].rstrip(".") for month in range(1, 13)]


def vega_locale() -> dict[str, Any]:
    """Return a Vega `config.locale`: chart axes and tooltips in the language's formats."""
    symbols: Mapping[str, str] = locale().number_symbols.get("latn", {})
    sunday_first = [6, 0, 1, 2, 3, 4, 5]
    wide = get_day_names("wide", "format", locale())
    short = weekday_names()
    english = _active == "en"
    return {
        "number": {"decimal": symbols.get("decimal", ","), "thousands": symbols.get("group", "."),
                   "grouping": [3], "currency": ["R$ ", ""]},
        "time": {
            "dateTime": "%x, %X", "date": "%Y-%m-%d" if english else "%d/%m/%Y",
            "time": "%H:%M:%S", "periods": ["AM", "PM"],
            "days": [wide[d] for d in sunday_first],
            "shortDays": [short[d] for d in sunday_first],
            "months": month_names("wide"), "shortMonths": month_names("abbreviated"),
        },
    }
