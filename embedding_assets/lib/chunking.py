"""Token-aware splitting of documents into chunks that fit the model.

The document is tokenized once with the model's own tokenizer (with character offsets). Every gap
between two tokens is a possible cut, ranked by what lies in the gap: a blank line (paragraph) ranks
above a sentence end, which ranks above plain whitespace, which ranks above a cut inside a word. Each
chunk takes as many tokens as fit and ends at the best-ranked cut in the second half of its window,
so boundaries prefer paragraphs, then sentences, then words, and only a single "word" longer than
the window is cut between tokens. Consecutive chunks share about `overlap` tokens, starting on a
word boundary.

Every chunk is re-tokenized with special tokens before it is returned and trimmed if needed, so no
chunk is longer than the model's maximum sequence length, whatever the tokenizer does at the edges.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

from tokenizers import Tokenizer

PARAGRAPH, SENTENCE, WORD, TOKEN, NO_CUT = 3, 2, 1, 0, -1
_SENTENCE_END = re.compile(r"[.!?。！？…:;][\"')\]»”’]*$")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_CJK_SENTENCE_END = set("。！？")


def _in_word(char: str) -> bool:
    return char.isalnum() and ord(char) < 0x2E80


@dataclass(frozen=True)
class Chunk:
    chunk_index: int
    text: str
    char_start: int
    char_end: int
    n_tokens: int  # special tokens included

    def text_hash(self) -> str:
        return text_hash(self.text)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc_id: str, chunk_index: int, chunk_text_hash: str) -> str:
    """Deterministic id of a chunk: the same document text always gives the same ids."""
    key = f"{doc_id}\x1f{chunk_index}\x1f{chunk_text_hash}".encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:32]


class Chunker:
    """Splits text into chunks of at most `max_tokens` tokens (special tokens included)."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, overlap: int = 32, min_fill: float = 0.5):
        self.tokenizer = _plain_copy(tokenizer)
        self.special_tokens = len(self.tokenizer.encode("", add_special_tokens=True).ids)
        if max_tokens <= self.special_tokens + 1:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for text next to {self.special_tokens} special tokens")
        self.max_tokens = max_tokens
        self.window = max_tokens - self.special_tokens
        if not 0 <= overlap < self.window // 2:
            raise ValueError(f"overlap={overlap} must be between 0 and {self.window // 2 - 1} tokens for max_tokens={max_tokens}")
        self.overlap = overlap
        self.min_fill = min_fill

    def split(self, text: str) -> list[Chunk]:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        offsets = encoding.offsets
        n = len(offsets)
        if n == 0:
            return []
        ranks = _cut_ranks(text, offsets)
        chunks: list[Chunk] = []
        start = 0
        while start < n:
            end = self._cut(ranks, start, n)
            chunk, end = self._fit(text, offsets, ranks, start, end, len(chunks))
            chunks.append(chunk)
            if end >= n:
                break
            start = self._next_start(ranks, start, end)
        return chunks

    def _cut(self, ranks: Sequence[int], start: int, n: int) -> int:
        """The end (exclusive token index) of the chunk that starts at `start`."""
        limit = start + self.window
        if limit >= n:
            return n
        lowest = start + max(1, int(self.window * self.min_fill))
        best, best_rank = limit, ranks[limit]
        for i in range(limit - 1, lowest - 1, -1):
            if ranks[i] > best_rank:
                best, best_rank = i, ranks[i]
                if best_rank == PARAGRAPH:
                    break
        return _cut_before(ranks, start, best)

    def _next_start(self, ranks: Sequence[int], start: int, end: int) -> int:
        if self.overlap == 0:
            return end
        candidate = max(start + 1, end - self.overlap)
        for i in range(candidate, end):
            if ranks[i] >= WORD:
                return i
        return end

    def _fit(self, text: str, offsets, ranks, a: int, b: int, index: int) -> tuple[Chunk, int]:
        """The chunk over tokens [a, b), trimmed until it re-tokenizes within the limit."""
        while True:
            char_start, char_end = offsets[a][0], offsets[b - 1][1]
            piece = text[char_start:char_end]
            count = len(self.tokenizer.encode(piece, add_special_tokens=True).ids)
            if count <= self.max_tokens:
                break
            # Re-tokenizing a piece that starts inside a word can add tokens: give some back.
            shorter = _cut_before(ranks, a, max(a + 1, b - max(1, count - self.max_tokens)))
            if shorter >= b:
                break
            b = shorter
        return Chunk(index, piece, char_start, char_end, count), b


def _cut_before(ranks: Sequence[int], start: int, end: int) -> int:
    """`end`, moved back (or, failing that, forward) off a gap inside one character."""
    i = end
    while i > start + 1 and ranks[i] == NO_CUT:
        i -= 1
    if ranks[i] != NO_CUT:
        return i
    i = end
    while ranks[i] == NO_CUT:
        i += 1
    return i


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer with truncation and padding switched off."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _cut_ranks(text: str, offsets) -> list[int]:
    """ranks[i] = how good a boundary the gap before token i is (ranks[0] is unused)."""
    ranks = [TOKEN] * (len(offsets) + 1)
    ranks[len(offsets)] = PARAGRAPH
    for i in range(1, len(offsets)):
        prev_end, next_start = offsets[i - 1][1], offsets[i][0]
        if next_start < prev_end:
            # Two tokens of one character (e.g. the jamo of a Hangul syllable): never cut here.
            ranks[i] = NO_CUT
            continue
        if next_start == prev_end:
            # No gap: a cut between two tokens of one word, unless punctuation or a CJK
            # character (a word on its own) sits on either side.
            before, after = text[prev_end - 1:prev_end], text[next_start:next_start + 1]
            if before in _CJK_SENTENCE_END:
                ranks[i] = SENTENCE
            elif not (_in_word(before) and _in_word(after)):
                ranks[i] = WORD
            continue
        gap = text[prev_end:next_start]
        if _BLANK_LINE.search(gap):
            ranks[i] = PARAGRAPH
        elif not gap.strip():
            tail = text[max(offsets[i - 1][0], prev_end - 4):prev_end]
            ranks[i] = SENTENCE if ("\n" in gap or _SENTENCE_END.search(tail)) else WORD
        else:
            ranks[i] = WORD
    return ranks
