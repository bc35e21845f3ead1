"""Token-aware splitting of documents into chunks that fit the model.

The document is tokenized with the model's own tokenizer (with character offsets). Every gap
between two tokens is a possible cut, ranked by what lies in the gap: a blank line (paragraph) ranks
above a sentence end, which ranks above plain whitespace, which ranks above a cut inside a word. Each
chunk takes as many tokens as fit and ends at the best-ranked cut in the second half of its window,
so boundaries prefer paragraphs, then sentences, then words, and only a single "word" longer than
the window is cut between tokens. Consecutive chunks share about `overlap` tokens, starting on a
word boundary.

Every chunk is re-tokenized with special tokens before it is returned and trimmed if needed, so no
chunk is longer than the model's maximum sequence length, whatever the tokenizer does at the edges.
One exception gives the same result without the work: under a tokenizer that tokenizes each word on
its own (BERT's pre-tokenizer, normalizer and WordPiece: `_word_local`), a chunk that starts and ends
between words (`_between_words`) has exactly the document's tokens over its span, so its count and
ids (the template's special tokens around them) are taken from the document's tokenization.
With `keep_ids`, each chunk carries its ids: what tokenizing its text with special tokens gives.

Memory is bounded by a segment, not by the document: the text is tokenized in segments of about
`segment_chars` characters, the spans and ranks of its tokens live in numpy arrays for the range of
tokens the chunker is reading (tokens behind the current chunk are dropped), and chunks are yielded
as they are made (`Chunker.iter_split`). Consecutive segments overlap: the next segment starts at a
whitespace inside the previous one, and the seam is accepted only where both tokenizations give the
very same tokens over the overlap; otherwise the segment grows (at worst to the whole document).
So the tokens, and therefore the chunks, are those of tokenizing the whole document at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer

PARAGRAPH, SENTENCE, WORD, TOKEN, NO_CUT = 3, 2, 1, 0, -1
_SENTENCE_END = re.compile(r"[.!?。！？…:;][\"')\]»”’]*$")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_CJK_SENTENCE_END = set("。！？")

SEGMENT_CHARS = 256 * 1024  # characters tokenized at a time
SEAM_CHARS = 2048  # characters tokenized twice where two segments meet

# Code-point tables for ranking gaps with numpy (index = code point; the last entry stands for
# every code point past the table).
_WORD_LIMIT = 0x2E80
_IN_WORD = np.array([chr(c).isalnum() for c in range(_WORD_LIMIT)] + [False])
_SPACE_LIMIT = 0x3001  # U+3000 is the last character Python counts as whitespace
_IS_SPACE = np.array([chr(c).isspace() for c in range(_SPACE_LIMIT)] + [False])
_CJK_END_CODES = np.array([ord(c) for c in sorted(_CJK_SENTENCE_END)], dtype=np.uint32)
_END_CODES = np.array([ord(c) for c in ".!?。！？…:;"], dtype=np.uint32)
_CLOSER_CODES = np.array([ord(c) for c in "\"')]»”’"], dtype=np.uint32)
_NEWLINE = 10
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _in_word(char: str) -> bool:
    return char.isalnum() and ord(char) < 0x2E80


@dataclass(frozen=True)
class Chunk:
    chunk_index: int
    text: str
    char_start: int
    char_end: int
    n_tokens: int  # special tokens included
    # The chunk's token ids, special tokens included, when the chunker keeps them (`keep_ids`).
    input_ids: np.ndarray | None = field(default=None, compare=False, repr=False)

    def text_hash(self) -> str:
        return text_hash(self.text)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc_id: str, chunk_index: int, chunk_text_hash: str) -> str:
    """Deterministic id of a chunk: the same document text always gives the same ids."""
    key = f"{doc_id}\x1f{chunk_index}\x1f{chunk_text_hash}".encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:32]


def document_size_problem(n_chars: int, max_chars: int | None) -> str | None:
    """Why a document of `n_chars` characters is refused under a cap of `max_chars`, or None."""
    if max_chars is None or max_chars <= 0 or n_chars <= max_chars:
        return None
    return (
        f"document too large to chunk: {n_chars:,} characters, over the limit of {max_chars:,} "
        f"(EMBEDDING_MAX_DOCUMENT_CHARS)"
    )


class Chunker:
    """Splits text into chunks of at most `max_tokens` tokens (special tokens included)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int,
        overlap: int = 32,
        min_fill: float = 0.5,
        *,
        max_document_chars: int | None = None,
        segment_chars: int = SEGMENT_CHARS,
        seam_chars: int = SEAM_CHARS,
        keep_ids: bool = False,
    ):
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
        self.max_document_chars = max_document_chars
        if seam_chars < 8 or segment_chars < 2 * seam_chars:
            raise ValueError(f"segment_chars={segment_chars} must be at least twice seam_chars={seam_chars} (>= 8)")
        self.segment_chars = segment_chars
        self.seam_chars = seam_chars
        self.keep_ids = keep_ids
        self._punctuation_seams = _splits_at_punctuation(self.tokenizer)
        self._word_local = _word_local(self.tokenizer, self.special_tokens)

    def size_problem(self, text: str) -> str | None:
        """Why `text` is too large for this chunker (`max_document_chars`), or None."""
        return document_size_problem(len(text), self.max_document_chars)

    def split(self, text: str) -> list[Chunk]:
        return list(self.iter_split(text))

    def iter_split(self, text: str) -> Iterator[Chunk]:
        """The chunks of `text`, in order, made as they are consumed."""
        whole = None
        if len(text) <= self.segment_chars:
            whole = self.tokenizer.encode(text, add_special_tokens=False)
            single = self._single_chunk(text, whole)
            if single is not None:
                yield from single
                return
        # A text of one segment was just tokenized whole: its first (only) segment reuses that.
        tokens = _Tokens(self._token_spans(text, whole), text)
        if tokens.at_end(0):
            return
        start, index = 0, 0
        while True:
            end = self._cut(tokens, start)
            chunk, end = self._fit(text, tokens, start, end, index)
            yield chunk
            index += 1
            if tokens.at_end(end):
                return
            start = self._next_start(tokens, start, end)
            tokens.release(start)

    def _single_chunk(self, text: str, plain) -> list[Chunk] | None:
        """The chunks of a document of one segment that fits one window (`plain`: the text's
        encoding without special tokens): [] without tokens, [the chunk] when it re-tokenizes
        within the limit; None when the general path must decide. The same chunk the general
        path makes, without ranking the gaps (no cut is needed)."""
        if not len(plain):
            return []
        if len(plain) > self.window:
            return None
        offsets = plain.offsets
        char_start, char_end = int(offsets[0][0]), int(offsets[-1][1])
        piece = text[char_start:char_end]
        if char_start == 0 and char_end == len(text):
            # The piece is the text: its encoding with special tokens is this one post-processed
            # (what `encode` does; truncation and padding are off), without tokenizing it again.
            encoding = self.tokenizer.post_process(plain, add_special_tokens=True)
        else:
            encoding = self.tokenizer.encode(piece, add_special_tokens=True)
        if len(encoding) > self.max_tokens:
            return None
        ids = np.array(encoding.ids, dtype=np.int32) if self.keep_ids else None
        return [Chunk(0, piece, char_start, char_end, len(encoding), ids)]

    def _cut(self, tokens: _Tokens, start: int) -> int:
        """The end (exclusive token index) of the chunk that starts at `start`."""
        limit = start + self.window
        if tokens.at_end(limit):
            return tokens.total
        lowest = start + max(1, int(self.window * self.min_fill))
        best = limit
        if lowest <= limit:
            # The best-ranked gap in [lowest, limit]; among equals, the last one.
            ranks = tokens.ranks[lowest - tokens.base : limit + 1 - tokens.base]
            best = lowest + len(ranks) - 1 - int(np.argmax(ranks[::-1] == ranks.max()))
        return _cut_before(tokens, start, best)

    def _next_start(self, tokens: _Tokens, start: int, end: int) -> int:
        if self.overlap == 0:
            return end
        candidate = max(start + 1, end - self.overlap)
        if candidate >= end:
            return end
        hits = np.flatnonzero(tokens.ranks[candidate - tokens.base : end - tokens.base] >= WORD)
        return candidate + int(hits[0]) if len(hits) else end

    def _fit(self, text: str, tokens: _Tokens, a: int, b: int, index: int) -> tuple[Chunk, int]:
        """The chunk over tokens [a, b), trimmed until it re-tokenizes within the limit."""
        while True:
            char_start = int(tokens.starts[a - tokens.base])
            char_end = int(tokens.ends[b - 1 - tokens.base])
            piece = text[char_start:char_end]
            if (
                self._word_local is not None and b - a <= self.window
                and _between_words(text, char_start) and _between_words(text, char_end)
            ):
                # Whole words, under a tokenizer that tokenizes each word on its own:
                # re-tokenizing the piece gives these very tokens.
                ids = None
                if self.keep_ids:
                    prefix, suffix = self._word_local
                    ids = np.concatenate((prefix, tokens.ids[a - tokens.base:b - tokens.base], suffix))
                return Chunk(index, piece, char_start, char_end, b - a + self.special_tokens, ids), b
            encoding = self.tokenizer.encode(piece, add_special_tokens=True)
            count = len(encoding)
            if count <= self.max_tokens:
                break
            # Re-tokenizing a piece that starts inside a word can add tokens: give some back.
            shorter = _cut_before(tokens, a, max(a + 1, b - max(1, count - self.max_tokens)))
            if shorter >= b:
                break
            b = shorter
        ids = np.array(encoding.ids, dtype=np.int32) if self.keep_ids else None
        return Chunk(index, piece, char_start, char_end, count, ids), b

    # ------------------------------------------------------------ tokenizing in segments

    def _spans(self, text: str, lo: int, hi: int, encoding=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Character spans (document offsets) and ids of the tokens of text[lo:hi] tokenized alone
        (`encoding`: that tokenization, when the caller has it)."""
        if encoding is None:
            encoding = self.tokenizer.encode(text[lo:hi], add_special_tokens=False)
        spans = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        spans += lo
        return spans[:, 0].copy(), spans[:, 1].copy(), np.array(encoding.ids, dtype=np.int32)

    def _token_spans(self, text: str, whole=None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The spans of the document's tokens, as consecutive non-empty blocks of (starts, ends, ids)
        (`whole`: the whole text's encoding, when the caller has it)."""
        size = len(text)
        pos = 0  # tokens before `pos` are out; the tokenization restarts cleanly at `pos`
        end = _segment_end(text, pos, self.segment_chars, self._punctuation_seams)
        current = self._spans(text, pos, end, whole if end >= size else None)
        while True:
            if end >= size:
                if len(current[0]):
                    yield current
                return
            seam = _cut_point(text, end - self.seam_chars // 2, max(pos + 1, end - self.seam_chars), self._punctuation_seams)
            keep = None
            if seam is not None:
                next_end = _segment_end(text, seam, self.segment_chars, self._punctuation_seams)
                following = self._spans(text, seam, next_end)
                keep = _seam_agrees(current, following, seam, end - self.seam_chars // 4)
            if keep is None:
                # No place to cut between words near the segment's end, or the tokens disagree
                # around the seam (a tokenizer that looks further): tokenize a longer segment.
                end = _segment_end(text, pos, 2 * (end - pos), self._punctuation_seams)
                current = self._spans(text, pos, end)
                continue
            if keep:
                yield current[0][:keep], current[1][:keep], current[2][:keep]
            pos, end, current = seam, next_end, following


def _segment_end(text: str, pos: int, length: int, punctuation: bool) -> int:
    """Where a segment of about `length` characters from `pos` ends: before a space if any."""
    target = pos + length
    if target >= len(text):
        return len(text)
    found = _cut_point(text, target, pos + length * 3 // 4, punctuation)
    return target if found is None else found


def _cut_point(text: str, target: int, lowest: int, punctuation: bool) -> int | None:
    """The last position in [lowest, target] that holds a space or a newline (no tokenizer joins
    the words on either side), or else, with a tokenizer that splits words at ASCII punctuation,
    one that holds such a mark; None if there is none."""
    found = max(text.rfind(" ", lowest, target + 1), text.rfind("\n", lowest, target + 1))
    if found >= lowest:
        return found
    if punctuation:
        for i in range(min(target, len(text) - 1), lowest - 1, -1):
            if text[i] in _ASCII_PUNCTUATION:
                return i
    return None


def _splits_at_punctuation(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer pre-tokenizes BERT-style: every ASCII punctuation mark a word."""
    pre = json.loads(tokenizer.to_str()).get("pre_tokenizer") or {}
    return pre.get("type") == "BertPreTokenizer"


def _word_boundary(char: str) -> bool:
    """Whether a character separates words for every BERT-style tokenizer, whatever its
    normalizer's settings: a space, tab, newline or carriage return, or a space separator (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _between_words(text: str, i: int) -> bool:
    """Whether position i (before text[i]) lies between two words for every BERT-style tokenizer:
    an end of the text, a `_word_boundary` character on either side, or an ASCII punctuation mark
    (a word of its own, which no normalizer changes) on either side."""
    if i <= 0 or i >= len(text):
        return True
    before, after = text[i - 1], text[i]
    return before in _ASCII_PUNCTUATION or after in _ASCII_PUNCTUATION or _word_boundary(before) or _word_boundary(after)


def _word_local(tokenizer: Tokenizer, special_tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids before, ids after the text) that the tokenizer adds, when it tokenizes every word on
    its own (BERT's pre-tokenizer and normalizer, a WordPiece model, special tokens that match no
    whitespace) and adds fixed ids around a single text; None for any other tokenizer. Under such
    a tokenizer, text between two `_word_boundary` characters tokenizes to the same tokens alone
    as inside its document (see `_between_words`)."""
    spec = json.loads(tokenizer.to_str())
    if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        return None
    if (spec.get("model") or {}).get("type") != "WordPiece":
        return None
    if spec.get("normalizer") is not None and spec["normalizer"].get("type") != "BertNormalizer":
        return None
    for added in spec.get("added_tokens") or ():
        content = added.get("content", "")
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word") or not content or any(_word_boundary(c) or c.isspace() for c in content):
            return None
    around = None
    for probe in ("a", "hello, world", "x\n\ny z"):
        plain = tokenizer.encode(probe, add_special_tokens=False).ids
        full = tokenizer.encode(probe, add_special_tokens=True).ids
        starts = [k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain]
        if not plain or not starts:
            return None
        k = starts[0]
        found = (tuple(full[:k]), tuple(full[k + len(plain):]))
        if around is not None and found != around:
            return None
        around = found
    if around is None or len(around[0]) + len(around[1]) != special_tokens:
        return None
    return np.array(around[0], dtype=np.int32), np.array(around[1], dtype=np.int32)


def _seam_agrees(current, following, seam: int, check_end: int) -> int | None:
    """How many tokens of `current` lie before `seam` if both tokenizations give the same tokens
    over [seam, check_end) and no token of `current` crosses the seam; None if they differ."""
    starts, ends, ids = current
    keep = int(np.searchsorted(starts, seam, side="left"))
    if keep and ends[keep - 1] > seam:
        return None  # a token crosses the seam: the seam is inside a word
    mine = slice(keep, keep + int(np.searchsorted(ends[keep:], check_end, side="right")))
    theirs = slice(0, int(np.searchsorted(following[1], check_end, side="right")))
    if not (
        np.array_equal(starts[mine], following[0][theirs]) and np.array_equal(ends[mine], following[1][theirs])
        and np.array_equal(ids[mine], following[2][theirs])
    ):
        return None
    return keep


class _Tokens:
    """The document's tokens as character spans, with the rank of the gap before each, held for
    a sliding range of token indexes [base, base + len): read ahead segment by segment as the
    chunker asks for tokens, and dropped once the chunker has moved past them."""

    def __init__(self, blocks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], text: str):
        self._blocks = blocks
        self._text = text
        self._previous: tuple[int, int] | None = None
        self.base = 0
        self.starts = np.empty(0, dtype=np.int64)
        self.ends = np.empty(0, dtype=np.int64)
        self.ids = np.empty(0, dtype=np.int32)
        self.ranks = np.empty(0, dtype=np.int8)  # ranks[i - base] = rank of the gap before token i
        self.total: int | None = None  # the number of tokens, once the last segment is read

    def _read(self) -> None:
        block = next(self._blocks, None)
        if block is None:
            self.total = self.base + len(self.starts)
            self.ranks = np.append(self.ranks, np.int8(PARAGRAPH))  # the end of the document
            return
        starts, ends, ids = block
        ranks = _block_ranks(self._text, starts, ends, self._previous)
        self._previous = (int(starts[-1]), int(ends[-1]))
        self.starts = np.concatenate((self.starts, starts))
        self.ends = np.concatenate((self.ends, ends))
        self.ids = np.concatenate((self.ids, ids))
        self.ranks = np.concatenate((self.ranks, ranks))

    def ensure(self, i: int) -> None:
        """Reads on until the rank of token `i` is known (or the document has ended)."""
        while self.total is None and self.base + len(self.ranks) <= i:
            self._read()

    def at_end(self, i: int) -> bool:
        self.ensure(i)
        return self.total is not None and i >= self.total

    def rank(self, i: int) -> int:
        self.ensure(i)
        return int(self.ranks[i - self.base])

    def release(self, i: int) -> None:
        """Forgets the tokens before `i` (when that frees most of what is held)."""
        drop = i - self.base
        if drop > 0 and drop * 2 >= len(self.starts):
            self.starts = self.starts[drop:].copy()
            self.ends = self.ends[drop:].copy()
            self.ids = self.ids[drop:].copy()
            self.ranks = self.ranks[drop:].copy()
            self.base = i


def _cut_before(tokens: _Tokens, start: int, end: int) -> int:
    """`end`, moved back (or, failing that, forward) off a gap inside one character."""
    i = end
    while i > start + 1 and tokens.rank(i) == NO_CUT:
        i -= 1
    if tokens.rank(i) != NO_CUT:
        return i
    i = end
    while tokens.rank(i) == NO_CUT:
        i += 1
    return i


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer with truncation and padding switched off."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _gap_rank(text: str, prev_start: int, prev_end: int, next_start: int) -> int:
    """The rank of the gap between a token spanning [prev_start, prev_end) and the next token."""
    if next_start < prev_end:
        # Two tokens of one character (e.g. the jamo of a Hangul syllable): never cut here.
        return NO_CUT
    if next_start == prev_end:
        # No gap: a cut between two tokens of one word, unless punctuation or a CJK
        # character (a word on its own) sits on either side.
        before, after = text[prev_end - 1:prev_end] if prev_end > 0 else "", text[next_start:next_start + 1]
        if before in _CJK_SENTENCE_END:
            return SENTENCE
        if not (_in_word(before) and _in_word(after)):
            return WORD
        return TOKEN
    gap = text[prev_end:next_start]
    if _BLANK_LINE.search(gap):
        return PARAGRAPH
    if not gap.strip():
        tail = text[max(prev_start, prev_end - 4):prev_end]
        return SENTENCE if ("\n" in gap or _SENTENCE_END.search(tail)) else WORD
    return WORD


def _block_ranks(text: str, starts: np.ndarray, ends: np.ndarray, previous: tuple[int, int] | None) -> np.ndarray:
    """Ranks of the gaps before the tokens of a block; `previous` is the token before the block
    (None for the document's first token, whose rank is never used). The common gaps (none, or
    whitespace without a newline) are ranked with numpy, the rest one by one with `_gap_rank`."""
    n = len(starts)
    ranks = np.full(n, TOKEN, dtype=np.int8)
    first = 0
    if previous is None:
        first, previous = 1, (int(starts[0]), int(ends[0]))
    if first >= n:
        return ranks
    ps = np.concatenate(([previous[0]], starts[first:-1])) if n - first > 1 else np.array([previous[0]], dtype=np.int64)
    pe = np.concatenate(([previous[1]], ends[first:-1])) if n - first > 1 else np.array([previous[1]], dtype=np.int64)
    ns = starts[first:]
    lo = max(0, int(pe.min()) - 4)
    hi = min(len(text), max(int(ns.max()), int(pe.max())) + 1)
    codes = np.frombuffer(text[lo:hi].encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    # One sentinel (code point 0: no letter, no space) on each side; char x sits at x - lo + 1.
    codes = np.concatenate((np.zeros(1, np.uint32), codes, np.zeros(1, np.uint32)))
    at = lambda x: np.clip(x - lo + 1, 0, len(codes) - 1)  # noqa: E731
    nonspace = np.concatenate(([0], np.cumsum(~_IS_SPACE[np.minimum(codes, _SPACE_LIMIT)])))
    newlines = np.concatenate(([0], np.cumsum(codes == _NEWLINE)))

    def in_word(c):
        return _IN_WORD[np.minimum(c, _WORD_LIMIT)]

    out = np.full(len(ns), TOKEN, dtype=np.int8)
    out[ns < pe] = NO_CUT
    touching = ns == pe
    before, after = codes[at(pe - 1)], codes[at(ns)]
    touch_rank = np.where(
        np.isin(before, _CJK_END_CODES), SENTENCE, np.where(in_word(before) & in_word(after), TOKEN, WORD)
    )
    out[touching] = touch_rank[touching]
    gap = ns > pe
    has_newline = (newlines[at(ns)] - newlines[at(pe)]) > 0
    blank = (nonspace[at(ns)] - nonspace[at(pe)]) == 0
    out[gap & ~blank] = WORD
    spaced = gap & blank & ~has_newline
    # A sentence end: the previous token's last (up to) four characters end with a sentence mark
    # and any closing quotes or brackets.
    tail = np.clip(pe - np.maximum(ps, pe - 4), 0, 4)
    found = np.zeros(len(ns), dtype=bool)
    closing = np.ones(len(ns), dtype=bool)
    for j in range(1, 5):
        c = codes[at(pe - j)]
        active = closing & (j <= tail)
        found |= active & np.isin(c, _END_CODES)
        closing = active & np.isin(c, _CLOSER_CODES)
    out[spaced] = np.where(found[spaced], SENTENCE, WORD)
    # Gaps with a newline, and tails ending in one ("$" matches before a final newline): by hand.
    slow = gap & (has_newline | (blank & (tail > 0) & (before == _NEWLINE)))
    for k in np.flatnonzero(slow):
        out[k] = _gap_rank(text, int(ps[k]), int(pe[k]), int(ns[k]))
    ranks[first:] = out
    return ranks
