"""Untrusted text (from a delivery, the Ploomes API or a URL) made safe for Streamlit.

Streamlit renders Markdown in `st.markdown`, `st.write` of strings, `st.title` and the
other headers, `st.caption`, `st.info`/`warning`/`error`/`success`, widget labels, the
options of `st.radio` / `st.segmented_control` / `st.pills` / `st.select_slider` (whatever
its documentation says), metric values and `help=` tooltips: a record named
`![p](https://x/t.png)` would load an image and `[Entrar](https://evil.example)` would be a
live link. Every such value goes through `plain()` before it meets one of them. Tables
(`st.dataframe`), `st.code`, `st.text`, `st.json` and the options of `st.selectbox` and
`st.multiselect` show text as it is: there, `cut()` at most, never `plain()` (its
backslashes would show). `code()` shows a URL, a path or an id verbatim: what a reader
copies from it has neither escapes nor `plain()`'s invisible word joiners.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ploomes.queries.records import explain_gap

HEADER_LIMIT = 120  # characters of a value shown in a title, header or option label
VALUE_LIMIT = 300  # characters of a value quoted inside a sentence (a warning, a caption)
MESSAGE_LIMIT = 10_000  # characters of a whole message built from several values

# Every ASCII punctuation character Markdown, GitHub's extensions or Streamlit's own
# syntax (`:red[…]`, `:material/icon:`, `$…$` math) can give a meaning to, plus the
# characters of HTML entities. CommonMark takes a backslash before any of them as "this
# character, literally".
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:&\"'=^])")
# Line breaks would start Markdown blocks; other control characters show as nothing.
_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]+")
# Some of Streamlit's Markdown works on the text after backslashes are read, where an
# escape no longer counts: links made of bare `https://…`, `www.…` and `name@host.tld`
# (GitHub's autolinks), `:material/…:` icons and `:emoji:` codes. An invisible
# WORD JOINER after `:` and `@`, and inside `www.`, leaves none of them to find.
_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?<=[:@])|(?<=[wW]{3})(?=\.)")


def cut(value: object, limit: int | None = None) -> str:
    """Return `value` as one line of text, at most `limit` characters (an ellipsis marks a cut).

    For places that show text as it is (selectbox options, table cells); for Markdown use
    `plain()`, which cuts the same way.
    """
    text = _BREAKS.sub(" ", "" if value is None else str(value)).strip()
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)].rstrip() + "…"
    return text


def plain(value: object, limit: int | None = None) -> str:
    """Return `value` as Markdown that renders as exactly its text (cut to `limit`).

    Line breaks become spaces and the ends are trimmed: a value is shown inline, never
    as Markdown blocks (a leading indent would make a code block). The text shown holds
    invisible word joiners (see _AUTOLINK); a value to be copied is better in `code()`.
    """
    text = _AUTOLINK.sub(_JOINER, cut(value, limit))
    return _SPECIAL.sub(r"\\\1", text)


def code(value: object, limit: int | None = None) -> str:
    """Return `value` as a Markdown code span: shown verbatim in a monospace font, with
    no escapes or invisible characters in what a reader copies (for URLs, paths, ids).
    """
    # Streamlit rewrites `:material/` before parsing, inside code spans too
    text = cut(value, limit).replace(":material/", f":{_JOINER}material/")
    if not text:
        return ""
    # a fence longer than any run of backticks inside; spaces (which CommonMark strips)
    # keep a backtick at either end from joining the fence
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _short(value: object, limit: int) -> object:
    if isinstance(value, str) and len(value) > limit:
        return cut(value, limit)
    return value


def gap_message(fields: Iterable[Mapping], previous_event_id: int, event_id: int) -> str:
    """Return a continuity gap's explanation as Markdown text, long values cut.

    The values Old held and the ones we knew are shown whole in the event's field
    changes; here each is cut to VALUE_LIMIT.
    """
    items = [dict(item, label=_short(item.get("label") or item.get("field"), HEADER_LIMIT),
                  found=_short(item.get("found"), VALUE_LIMIT),
                  expected=_short(item.get("expected"), VALUE_LIMIT)) for item in fields]
    # a list or object value is not cut above: the whole message has a ceiling too
    return plain(explain_gap(items, previous_event_id, event_id), limit=MESSAGE_LIMIT)
