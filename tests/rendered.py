"""What a reader sees of a Markdown value the dashboard shows (for AppTest assertions).

Pages escape untrusted text with `views.text.plain()`: a backslash before punctuation
and an invisible word joiner after `:` and `@`. AppTest hands back the Markdown source;
this resolves the escapes so a test can look for the words on screen.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def rendered(markdown: object) -> str:
    """Return the text a Markdown value shows: escapes resolved, word joiners dropped."""
    return _ESCAPED.sub(r"\1", str(markdown)).replace("\u2060", "")


def rendered_all(elements) -> str:
    """Return the shown text of AppTest elements, one per line."""
    return "\n".join(rendered(e.value) for e in elements)


def on_screen(text: str) -> re.Pattern:
    """Return a pattern that finds `text` in a page's DOM text, joiners or not.

    `plain()` leaves an invisible word joiner after `:` and `@` (and inside `www.`), which
    a browser keeps in the element's text.
    """
    joiner = "\u2060?"
    return re.compile("".join(re.escape(c) + (joiner if c in ":@" else "") for c in text)
                      .replace(r"www\.", "www" + joiner + r"\."))
