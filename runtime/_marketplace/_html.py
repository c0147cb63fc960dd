"""Text from publishers made safe for the catalogue's HTML pages.

Everything a publisher wrote (name, description, author, keywords, readme, links) is hostile
until shown otherwise. The rule is: *escape everything, then add markup we wrote*. The readme
renderer recognises a tiny subset of Markdown (headings, paragraphs, bullet lists, fenced code
blocks) by line shape only; the text inside each block is escaped, so a ``<script>``, an
``<img onerror>`` or a ``[x](javascript:...)`` in a readme is shown as the characters it is and
never becomes an element or a link (readme links are not rendered at all: no ``href`` ever
comes from a readme). Control characters and the Unicode bidirectional overrides (which can
make ``exe.txt`` read as ``txt.exe``, the "Trojan Source" trick) are replaced by a visible
U+FFFD before escaping.
"""

from __future__ import annotations

import html
import re
from typing import Final
from urllib.parse import urlsplit

__all__ = ["MAX_README_CHARS", "clean", "esc", "render_readme", "safe_url"]

#: A readme longer than this is cut on the page (the registry already stores at most 256 KiB;
#: a page a person reads needs far less, and a smaller page is cheaper to serve and render).
MAX_README_CHARS: Final = 100_000
#: Longest URL turned into a link; longer ones are not links (nobody types them).
MAX_URL_CHARS: Final = 500
#: Bidi embeddings/overrides/isolates and marks, then C0 (but tab and newline), DEL, C1, and
#: the line/paragraph separators a renderer may treat as breaks.
_UNSAFE_CHARS: Final = re.compile(
    "[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]"
)
_HEADING: Final = re.compile(r"(#{1,6})[ \t]+(.*?)[ \t#]*")
_BULLET: Final = re.compile(r"[ \t]{0,3}[-*+][ \t]+(.*)")
_FENCE: Final = re.compile(r"[ \t]{0,3}(```|~~~)")


def clean(text: str) -> str:
    """``text`` with bidi controls and control characters replaced by U+FFFD (visible, so
    a reader sees that something was there)."""
    return _UNSAFE_CHARS.sub("\ufffd", text)


def esc(text: object) -> str:
    """``text`` for an HTML text node or a quoted attribute value."""
    return html.escape(clean(str(text)), quote=True)


def safe_url(url: str) -> str | None:
    """``url`` if it is an absolute ``http(s)`` URL with a host and no whitespace or control
    characters, else ``None`` (``javascript:``, ``data:``, ``//host``, relative paths...)."""
    if not url or len(url) > MAX_URL_CHARS or clean(url) != url or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def render_readme(text: str) -> str:
    """HTML for a readme: headings, paragraphs, bullet lists and code blocks, every character
    of the text escaped. Readme headings start at ``<h3>`` (the page owns h1 and h2)."""
    cut = len(text) > MAX_README_CHARS
    lines = text[:MAX_README_CHARS].replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if para:
            out.append("<p>" + esc(" ".join(para)) + "</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in lines:
        if code is not None:
            if _FENCE.match(line):
                out.append("<pre><code>" + esc("\n".join(code)) + "</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if _FENCE.match(line):
            flush()
            code = []
        elif m := _HEADING.fullmatch(line):
            flush()
            level = min(6, len(m.group(1)) + 2)
            out.append(f"<h{level}>{esc(m.group(2))}</h{level}>")
        elif m := _BULLET.fullmatch(line):
            if para:
                flush()
            items.append(m.group(1))
        elif not line.strip():
            flush()
        elif items and line[:1] in (" ", "\t"):
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            para.append(line.strip())
    if code is not None:  # an unclosed fence runs to the end, as in Markdown
        out.append("<pre><code>" + esc("\n".join(code)) + "</code></pre>")
    flush()
    if cut:
        out.append(
            f'<p class="note">The readme is cut here (the page shows its first '
            f"{MAX_README_CHARS:,} characters; the package holds all of it).</p>"
        )
    return "\n".join(out)
