"""HTML pages (.html, .htm): the visible text of the page is one document, its (encoded) path the doc_id.

Scripts, styles, templates and the title are left out; block elements become paragraph breaks,
line-level elements line breaks, and whitespace collapses as a browser shows it (except in <pre>).
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser

from embedding_assets.lib.readers.base import Document, LandedFile, Rejection, decode_utf8, path_doc_id, text_format, to_document

SUFFIXES = (".html", ".htm")

_SKIPPED_TAGS = frozenset({"script", "style", "template", "title"})
_HEAD_TAGS = frozenset({"base", "link", "meta", "noscript", "script", "style", "template", "title"})
_PARAGRAPH_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "details", "dialog", "div", "dl",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hgroup", "hr", "html", "legend", "main", "nav", "ol", "p", "pre", "section",
        "table", "ul",
    }
)
_LINE_TAGS = frozenset({"br", "caption", "dd", "dt", "li", "option", "summary", "tr"})
_CELL_TAGS = frozenset({"td", "th"})


@text_format
def read(file: LandedFile) -> Iterator[Document | Rejection]:
    relpath, max_chars = file.relpath, file.max_chars
    markup, flags = decode_utf8(file.data)
    del file  # the bytes are decoded: let them go before the page is parsed
    try:
        text = html_to_text(markup)
    except Exception as exc:  # noqa: BLE001
        yield Rejection(relpath, None, f"could not extract text from HTML: {exc}")
        return
    yield to_document(path_doc_id(relpath), relpath, None, text, flags, max_chars)


def html_to_text(markup: str) -> str:
    """The text a browser would show for `markup`, with paragraph and line breaks."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return parser.text()


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.in_head = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "head":
            self.in_head = True
        elif self.in_head and tag not in _HEAD_TAGS:
            # Browsers close <head> implicitly at the first body element.
            self.in_head = False
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self.in_head = False
        if tag in _SKIPPED_TAGS and self.skip_depth:
            self.skip_depth -= 1
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in _PARAGRAPH_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.in_head:
            if not data.strip():
                return
            self.in_head = False
        if self.pre_depth:
            self.parts.append(data.replace("\r\n", "\n").replace("\r", "\n"))
        else:
            self.parts.append(data.replace("\n", " ").replace("\r", " "))

    def _break(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self.parts.append("\n\n")
        elif tag in _LINE_TAGS:
            self.parts.append("\n")
        elif tag in _CELL_TAGS:
            self.parts.append(" ")

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).split("\n")]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip("\n")
