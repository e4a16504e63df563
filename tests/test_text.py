"""views.text: untrusted text made safe for Streamlit's Markdown (the browser proof is in
tests/test_injection_browser.py; these pin down the rules for any text)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from rendered import rendered

from views.text import HEADER_LIMIT, MESSAGE_LIMIT, VALUE_LIMIT, code, cut, gap_message, plain

# Any text: ASCII punctuation, line breaks, control characters and pieces of links
# weighted in.
TEXT = st.lists(st.one_of(st.text(), st.sampled_from(
    [*"\\`*_{}[]()#+-.!|~<>$:&\"'=^@/ \t\r\n\x00\x0b\x85\u2028", "www", "WwW.", "http://",
     "https://", ":material/", ":smile:", "a@b.co"]))).map("".join)
PUNCTUATION = "\\`*_{}[]()#+-.!|~<>$:&\"'=^"


@given(TEXT)
def test_plain_renders_to_the_text_itself(value):
    assert rendered(plain(value)) == cut(value)


@given(TEXT)
def test_plain_leaves_no_markdown_character_unescaped(value):
    escaped = plain(value)
    # drop each escape pair; any punctuation left would be Markdown syntax
    assert not set(re.sub(r"\\.", "", escaped)) & set(PUNCTUATION)
    assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]", escaped)
    assert escaped == escaped.strip()  # a leading indent would be a code block


@given(TEXT)
def test_plain_leaves_nothing_for_streamlits_text_rules(value):
    """GitHub's autolinks (`https://…`, `www.…`, `name@host`), `:material/…:` icons and
    `:emoji:` codes are found in the text after escapes are read: none may remain."""
    text = plain(value).replace("\\", "")
    assert not re.search(r"://|www\.|@[-\w]|:[\w+/-]", text, re.IGNORECASE)


def test_plain_examples():
    assert plain("![p](http://x.example/t.png)") == (
        "\\!\\[p\\]\\(http\\:\u2060//x\\.example/t\\.png\\)")
    assert plain("**bold**") == "\\*\\*bold\\*\\*"
    assert plain("  1. first\nsecond  ") == "1\\. first second"
    assert plain(None) == "" and plain(405531355) == "405531355"


def test_cut_marks_a_cut_and_keeps_the_limit():
    assert cut("a" * 200, 120) == "a" * 119 + "…"
    assert len(plain("b" * 100_000, HEADER_LIMIT)) == HEADER_LIMIT
    assert cut("word " * 30, 11) == "word word…"  # no space before the ellipsis
    assert cut("short", 120) == "short"
    assert cut("line\r\nbreak\u2028and\x00nul") == "line break and nul"


@given(TEXT)
def test_code_shows_the_text_verbatim(value):
    span = code(value)
    text = cut(value).replace(":material/", ":\u2060material/")
    if not text:
        assert span == ""
        return
    fence = re.match(r"`+", span).group()
    assert span.endswith(fence)
    inner = span[len(fence):-len(fence)]
    # CommonMark strips one space at both ends when both are spaces
    if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
        inner = inner[1:-1]
    assert inner == text
    assert fence not in text  # no run of backticks inside closes the span


def test_gap_message_cuts_long_values_and_keeps_the_events():
    fields = [{"field": "Name", "label": "Name", "found": "x" * 5000, "expected": "y" * 5000},
              {"field": "Tags", "label": "**Tags**", "found": [1, 2], "expected": [3]}]
    message = rendered(gap_message(fields, 41, 42))
    assert message == (f'O Old dizia Name era "{"x" * (VALUE_LIMIT - 1)}…", mas a nossa última '
                       f'entrega dizia "{"y" * (VALUE_LIMIT - 1)}…"; **Tags** era [1,2], mas a '
                       "nossa última entrega dizia [3]: uma alteração se perdeu entre o evento "
                       "41 e o evento 42.")
    huge = [{"field": "Items", "found": list(range(5000)), "expected": []}]
    assert len(rendered(gap_message(huge, 1, 2))) == MESSAGE_LIMIT
