"""Plain text files (.txt, .md, .rst): the whole file is one document, its (encoded) path the doc_id."""

from __future__ import annotations

from collections.abc import Iterator

from embedding_assets.lib.readers.base import (
    MAX_UTF8_BYTES_PER_CHAR,
    Document,
    LandedFile,
    Rejection,
    decode_utf8,
    over_document_cap,
    path_doc_id,
    text_format,
    to_document,
)

SUFFIXES = (".txt", ".md", ".rst")


@text_format
def read(file: LandedFile) -> Iterator[Document | Rejection]:
    relpath, max_chars = file.relpath, file.max_chars
    if len(file.data) > MAX_UTF8_BYTES_PER_CHAR * max_chars:  # over the cap whatever it decodes to
        yield Rejection(relpath, None, over_document_cap(len(file.data), max_chars, "bytes"))
        return
    text, flags = decode_utf8(file.data)
    del file  # the bytes are decoded: let them go before the document is built
    yield to_document(path_doc_id(relpath), relpath, None, text, flags, max_chars)
