"""Untrusted text (from a delivery, the Ploomes API or a URL) made safe for Streamlit.

Streamlit renders Markdown in `st.markdown`, `st.write` of strings, `st.title` and the
other headers, `st.caption`, `st.info`/`warning`/`error`/`success`, widget labels and
`help=` tooltips: a record named `![p](https://x/t.png)` would load an image and
`[Entrar](https://evil.example)` would be a live link. Every such value goes through
`plain()` before it meets one of them; tables (`st.dataframe`) and `st.code` /
`st.text` show text as it is and need nothing.
"""

from __future__ import annotations

import re

# Every ASCII punctuation character Markdown, GitHub's extensions or Streamlit's own
# syntax (`:red[…]`, `:material/icon:`, `$…$` math) can give a meaning to, plus the
# characters of HTML entities. CommonMark takes a backslash before any of them as "this
# character, literally".
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:&\"'=^])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
HEADER_LIMIT = 120  # characters of a value shown in a title or header


def plain(value: object, limit: int | None = None) -> str:
    """Return `value` as Markdown that renders as exactly its text (cut to `limit`).

    Line breaks become spaces: a value is shown inline, never as Markdown blocks.
    """
    text = "" if value is None else str(value)
    text = _LINE_BREAKS.sub(" ", text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return _SPECIAL.sub(r"\\\1", text)
