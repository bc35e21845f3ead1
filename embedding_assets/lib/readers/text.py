"""Plain text files (.txt, .md, .rst): the whole file is one document, its path the doc_id."""

from __future__ import annotations

from collections.abc import Iterator

from embedding_assets.lib.readers.base import Document, LandedFile, Rejection, decode_utf8, text_format, to_document

SUFFIXES = (".txt", ".md", ".rst")


@text_format
def read(file: LandedFile) -> Iterator[Document | Rejection]:
    relpath = file.relpath
    text, flags = decode_utf8(file.data)
    del file  # the bytes are decoded: let them go before the document is built
    yield to_document(relpath, relpath, None, text, flags)
