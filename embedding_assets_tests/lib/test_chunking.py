"""Tests for embedding_assets.lib.chunking with the real bundled all-MiniLM-L6-v2 tokenizer.

Every property is checked by re-tokenizing what the chunker returned, never by trusting its own
counts: no chunk is longer than the model takes, the offsets point at the chunk's text, the chunks
cover the document, and cuts land on paragraph, sentence and word boundaries when there are any.
"""

from __future__ import annotations

import base64
import functools
import json
import pydoc
import random
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_assets.lib.chunking import Chunk, Chunker, chunk_id, text_hash
from embedding_assets.lib.encoders import load_tokenizer

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (max_tokens, overlap) pairs: overlap must stay below half the window (max_tokens - 2 special tokens).
CONFIGS = [(16, 0), (16, 6), (32, 14), (64, 0), (256, 0), (256, 126)]


@functools.cache
def info():
    return load_tokenizer("bundled")


@functools.cache
def chunker(max_tokens: int, overlap: int, min_fill: float = 0.5) -> Chunker:
    return Chunker(info().tokenizer, max_tokens, overlap=overlap, min_fill=min_fill)


def count_with_specials(text: str) -> int:
    """Token count of `text` as the model would see it: special tokens added, nothing truncated."""
    return len(info().tokenizer.encode(text, add_special_tokens=True).ids)


def count_plain(text: str) -> int:
    return len(info().tokenizer.encode(text, add_special_tokens=False).ids)


# ---------------------------------------------------------------------------------------------
# Generated text

ENGLISH = (
    "the of and to in is was for that with as on by it from at an be this which or are have not "
    "model token chunk embedding vector document paragraph sentence window boundary index search "
    "Python JSON library encoder decoder Unicode network parser value object array string number "
    "running quickly unbelievable internationalization antidisestablishment Mr Dr e.g. i.e. U.S.A."
).split()
CJK = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"
HANGUL = "한국어를배우는것은재미있습니다가나다라마바사아자차카타파하"
EMOJI = ["😀", "🚀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🤖"]
HEBREW = "אבגדהוזחטיכלמנסעפצקרשת"
ARABIC = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"
PUNCT = ".,;:!?-–—()[]{}\"'«»“”…/\\@#$%^&*_=+<>|~`"

_SAFE = [" ", " ", " ", "  ", "\t", "\n", "\n\n", " \n \n ", "\r\n\r\n", ". ", "! ", "? ", ", ", "; ", "... ", "。", "\u00a0"]
SAFE_SEPARATORS = st.sampled_from(_SAFE)
SEPARATORS = st.sampled_from(_SAFE + ["\u200b", "", ""])


def is_hangul_syllable(char: str) -> bool:
    """Precomposed Hangul decomposes (NFD) into 2-3 jamo tokens that share one character's offsets."""
    return "\uac00" <= char <= "\ud7a3"


def _word_pieces(long_words: bool, hangul: bool):
    # Without long words, every piece is at most 5 tokens, so a word boundary always lies in the
    # second half of even the smallest (14-token) window and no cut has to fall inside a word.
    short = 10 if long_words else 5
    any_char = st.characters(blacklist_categories=("Cs",))
    if not hangul:
        any_char = any_char.filter(lambda c: not is_hangul_syllable(c))
    pieces = [
        st.sampled_from(ENGLISH),
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=short),
        st.text(alphabet=CJK, min_size=1, max_size=12),
        st.lists(st.sampled_from(EMOJI), min_size=1, max_size=3).map("".join),
        st.text(alphabet=HEBREW, min_size=1, max_size=short),
        st.text(alphabet=ARABIC, min_size=1, max_size=short),
        st.text(alphabet=PUNCT, min_size=1, max_size=4),
        st.text(alphabet=" \t\n\r\f\v\u3000", min_size=1, max_size=12),
        st.integers(0, 10**6).map(str),
        st.text(alphabet=any_char, max_size=short),
    ]
    if long_words:
        # Long runs without spaces: gibberish the tokenizer splits into many word pieces, words
        # over its 100-character limit (one [UNK]), identifiers and URLs.
        pieces += [
            st.text(alphabet="qxzjvkbwmpaeiou", min_size=20, max_size=140),
            st.text(alphabet=string.ascii_lowercase + string.digits + "_./-", min_size=20, max_size=200),
            st.text(alphabet=CJK, min_size=30, max_size=120),
        ]
    if hangul:
        pieces.append(st.text(alphabet=HANGUL, min_size=1, max_size=10))
    return st.one_of(*pieces)


def texts(long_words: bool = True, hangul: bool = False, max_pieces: int = 120):
    # "" and a zero-width space (removed by the normalizer) glue neighbouring pieces into one word.
    separators = SEPARATORS if long_words else SAFE_SEPARATORS
    return st.lists(st.tuples(_word_pieces(long_words, hangul), separators), max_size=max_pieces).map(
        lambda pairs: "".join(a + b for a, b in pairs)
    )


@functools.cache
def json_doc() -> str:
    return pydoc.render_doc(json, renderer=pydoc.plaintext)


# ---------------------------------------------------------------------------------------------
# Shared checks


def check_basic(text: str, chunks: list[Chunk], max_tokens: int, strict: bool = True) -> None:
    """Properties that hold for every input: limits, offsets, order, indexes."""
    for i, chunk in enumerate(chunks):
        assert chunk.chunk_index == i
        assert 0 <= chunk.char_start < chunk.char_end <= len(text)
        assert chunk.text == text[chunk.char_start : chunk.char_end]
        actual = count_with_specials(chunk.text)
        assert actual <= max_tokens, f"chunk {i} has {actual} tokens > {max_tokens}: {chunk.text!r}"
        assert chunk.n_tokens == actual
        assert count_plain(chunk.text) > 0, f"chunk {i} holds no token: {chunk.text!r}"
    for prev, nxt in zip(chunks, chunks[1:]):
        if strict:
            assert nxt.char_start > prev.char_start, f"chunks must strictly advance: {prev} then {nxt}"
        else:
            assert nxt.char_start >= prev.char_start
        assert nxt.char_end >= prev.char_end, "chunks must stay in document order"


def check_covers(text: str, chunks: list[Chunk], overlap: int) -> None:
    """Nothing that carries a token lies outside every chunk; with no overlap, chunks are disjoint."""
    if count_plain(text) == 0:
        assert chunks == []
        return
    assert chunks, "a text with tokens must give at least one chunk"
    assert count_plain(text[: chunks[0].char_start]) == 0, f"text before the first chunk lost: {text[: chunks[0].char_start]!r}"
    assert count_plain(text[chunks[-1].char_end :]) == 0, f"text after the last chunk lost: {text[chunks[-1].char_end :]!r}"
    for prev, nxt in zip(chunks, chunks[1:]):
        if overlap == 0:
            assert nxt.char_start >= prev.char_end, f"chunks {prev.chunk_index} and {nxt.chunk_index} overlap with overlap=0"
        gap = text[prev.char_end : nxt.char_start]
        assert count_plain(gap) == 0, f"text between chunks {prev.chunk_index} and {nxt.chunk_index} lost: {gap!r}"


# ---------------------------------------------------------------------------------------------
# Limits, offsets and order, on any text


@pytest.mark.parametrize("max_tokens,overlap", CONFIGS)
@SETTINGS
@given(text=texts())
def test_no_chunk_exceeds_the_limit_and_offsets_match(max_tokens, overlap, text):
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens)
    if count_plain(text) == 0:
        assert chunks == []
    else:
        assert chunks and count_plain(text[: chunks[0].char_start]) == 0


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (16, 6), (64, 8)])
@SETTINGS
@given(text=texts(hangul=True))
def test_no_chunk_exceeds_the_limit_with_hangul(max_tokens, overlap, text):
    """Hangul syllables are several jamo tokens each."""
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens, strict=False)


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (16, 3), (64, 0), (256, 64)])
def test_real_documentation_text(max_tokens, overlap):
    text = json_doc()
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, overlap)
    assert len(chunks) > count_plain(text) // (max_tokens - 2)
    if overlap == 0:
        # Pure prose and code: the chunks laid end to end hold every token of the document.
        assert sum(count_plain(c.text) for c in chunks) == count_plain(text)


# ---------------------------------------------------------------------------------------------
# Coverage: offsets cover the text (every token lands in a chunk)


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (32, 0), (256, 0), (16, 6), (64, 8)])
@SETTINGS
@given(text=texts(long_words=False, hangul=False))
def test_chunks_cover_text_cut_on_word_boundaries(max_tokens, overlap, text):
    """Text whose words are short enough that every cut can fall between words."""
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, overlap)


# Known failures: when a chunk has to be cut inside a word (no better boundary in the second half
# of its window), re-tokenizing the next piece from the middle of the word can give more tokens
# than the piece had in context. The chunk is then trimmed, and the next chunk must start from the
# trimmed end, or the trimmed tokens would belong to no chunk.
GIBBERISH = "oizpivmzkzqawezjwxewvexpzjjwxqpvbkuxuuku"  # one 40-char word, 31 word pieces
KOREAN = "한국어를 배우는 것은 재미있습니다 " * 3  # each Hangul syllable is 2-3 jamo tokens


@pytest.mark.parametrize(
    "text,max_tokens,overlap,lost_at",
    [
        (GIBBERISH, 16, 0, 35),  # text[35] == "x": chunks are [0:18], [18:35], [36:40]
        (KOREAN, 16, 0, 21),  # text[21] == "어": chunks are [0:6], [6:21], [22:37], ...
    ],
    ids=["long-word", "hangul"],
)
def test_chunks_cover_text_when_cut_inside_a_word(text, max_tokens, overlap, lost_at):
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens)
    assert any(c.char_start <= lost_at < c.char_end for c in chunks), f"{text[lost_at]!r} at {lost_at} is in no chunk"
    check_covers(text, chunks, overlap)


def test_overlapping_chunks_strictly_advance_with_hangul():
    # '오' is two tokens (ᄋ, ##ᅩ) with the same offsets (0, 1): a chunk must never start or end
    # between them, or it would repeat the previous chunk's characters (char_start 0 again).
    text = "오늘 좋네요. 한국어를"
    chunks = chunker(16, 6).split(text)
    check_basic(text, chunks, 16)


@pytest.mark.parametrize("max_tokens", [16, 32, 64])
@SETTINGS
@given(text=texts())
def test_consecutive_chunks_never_overlap_without_overlap(max_tokens, text):
    """Holds on any text, long words included."""
    chunks = chunker(max_tokens, 0).split(text)
    check_basic(text, chunks, max_tokens)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.char_start >= prev.char_end, f"{prev.text!r} and {nxt.text!r} overlap"


# ---------------------------------------------------------------------------------------------
# Determinism and ids


@settings(max_examples=10, deadline=None)
@given(text=texts(max_pieces=60), config=st.sampled_from(CONFIGS))
def test_chunking_is_deterministic(text, config):
    max_tokens, overlap = config
    first = chunker(max_tokens, overlap).split(text)
    again = chunker(max_tokens, overlap).split(text)
    fresh = Chunker(info().tokenizer, max_tokens, overlap=overlap).split(text)
    assert first == again == fresh
    ids = [chunk_id("doc-1", c.chunk_index, c.text_hash()) for c in first]
    assert ids == [chunk_id("doc-1", c.chunk_index, text_hash(c.text)) for c in fresh]
    assert len(set(ids)) == len(ids)


def test_chunk_id_and_text_hash_are_stable():
    h = text_hash("hello world")
    assert h == text_hash("hello world") == Chunk(0, "hello world", 0, 11, 4).text_hash()
    assert len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    assert text_hash("hello world") != text_hash("hello world ")
    assert text_hash("é") != text_hash("e\u0301")  # no normalization: different bytes, different hash
    cid = chunk_id("doc", 3, h)
    assert cid == chunk_id("doc", 3, h)
    assert len(cid) == 32 and all(c in "0123456789abcdef" for c in cid)
    assert chunk_id("doc", 3, h) != chunk_id("doc2", 3, h)
    assert chunk_id("doc", 3, h) != chunk_id("doc", 4, h)
    assert chunk_id("doc", 3, h) != chunk_id("doc", 3, text_hash("hello world!"))
    # The separator keeps fields apart: "doc1" + index 1 is not "doc" + index 11.
    assert chunk_id("doc1", 1, h) != chunk_id("doc", 11, h)


@settings(max_examples=200, deadline=None)
@given(
    a=st.tuples(st.text(max_size=20), st.integers(0, 10_000), st.text(max_size=30)),
    b=st.tuples(st.text(max_size=20), st.integers(0, 10_000), st.text(max_size=30)),
)
def test_chunk_ids_differ_when_any_field_differs(a, b):
    id_a = chunk_id(a[0], a[1], text_hash(a[2]))
    id_b = chunk_id(b[0], b[1], text_hash(b[2]))
    assert id_a == chunk_id(a[0], a[1], text_hash(a[2]))
    assert (id_a == id_b) == (a == b)


# ---------------------------------------------------------------------------------------------
# Boundary preference

SENTENCE_WORDS = "alpha beta gamma delta river stone light cloud music table garden window".split()


def sentence_strategy(min_words: int, max_words: int):
    return st.tuples(
        st.lists(st.sampled_from(SENTENCE_WORDS), min_size=min_words, max_size=max_words),
        st.sampled_from([".", "!", "?", "."]),
    ).map(lambda p: " ".join(p[0]).capitalize() + p[1])


def paragraphs_strategy(max_paragraph_tokens: int):
    """Paragraphs of sentences, each paragraph at most `max_paragraph_tokens` tokens."""

    def pack(drawn: tuple[list[str], list[bool]]) -> list[str]:
        sentences, breaks = drawn
        paragraphs: list[list[str]] = [[]]
        for sentence, new_paragraph in zip(sentences, breaks):
            candidate = " ".join(paragraphs[-1] + [sentence])
            if paragraphs[-1] and (new_paragraph or count_plain(candidate) > max_paragraph_tokens):
                paragraphs.append([])
            paragraphs[-1].append(sentence)
        return [" ".join(p) for p in paragraphs]

    sentences = st.lists(sentence_strategy(1, 4), min_size=2, max_size=150)
    return (
        sentences.flatmap(lambda ss: st.tuples(st.just(ss), st.lists(st.booleans(), min_size=len(ss), max_size=len(ss))))
        .map(pack)
    )


def paragraph_starts(text: str, paragraphs: list[str], sep: str) -> tuple[set[int], set[int]]:
    starts, ends, pos = set(), set(), 0
    for p in paragraphs:
        assert text.startswith(p, pos)
        starts.add(pos)
        ends.add(pos + len(p))
        pos += len(p) + len(sep)
    return starts, ends


@pytest.mark.parametrize("max_tokens", [16, 32, 64])
@SETTINGS
@given(data=st.data(), sep=st.sampled_from(["\n\n", "\n\n\n", "\n  \n", "\r\n\r\n"]))
def test_paragraphs_shorter_than_half_the_window_are_never_split(max_tokens, data, sep):
    window = max_tokens - 2
    # The chunker looks for its cut in the second half of the window (min_fill=0.5), so with
    # paragraphs under half a window there is always a paragraph break to cut at.
    paragraphs = data.draw(paragraphs_strategy(window // 2 - 1))
    text = sep.join(paragraphs)
    if count_plain(text) <= window:
        paragraphs = paragraphs * (window // max(1, count_plain(text)) + 1)
        text = sep.join(paragraphs)
    starts, ends = paragraph_starts(text, paragraphs, sep)
    chunks = chunker(max_tokens, 0).split(text)
    assert len(chunks) > 1
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, 0)
    for c in chunks:
        assert c.char_start in starts, f"chunk starts mid-paragraph: {c.text!r}"
        assert c.char_end in ends, f"chunk ends mid-paragraph: {c.text!r}"


@pytest.mark.parametrize("max_tokens", [16, 32, 64])
@SETTINGS
@given(data=st.data())
def test_paragraphs_shorter_than_the_window_are_never_split_with_min_fill_zero(max_tokens, data):
    window = max_tokens - 2
    paragraphs = data.draw(paragraphs_strategy(window - 1))
    text = "\n\n".join(paragraphs)
    if count_plain(text) <= window:
        paragraphs = paragraphs * (window // max(1, count_plain(text)) + 1)
        text = "\n\n".join(paragraphs)
    starts, ends = paragraph_starts(text, paragraphs, "\n\n")
    chunks = chunker(max_tokens, 0, 0.0).split(text)
    assert len(chunks) > 1
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, 0)
    for c in chunks:
        assert c.char_start in starts and c.char_end in ends, f"chunk cut mid-paragraph: {c.text!r}"


def test_paragraph_break_beats_later_sentence_breaks():
    max_tokens = 32  # a 30-token window; cuts are looked for in tokens 15..30
    first = "Alpha beta gamma. Delta river stone. Light cloud music table garden. Window river."
    rest = " ".join(["Light cloud music.", "Table garden window river stone."] * 6)
    assert 15 <= count_plain(first) < 30
    text = first + "\n\n" + rest
    chunks = chunker(max_tokens, 0).split(text)
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, 0)
    # Sentence ends follow the blank line inside the first window, but the blank line wins.
    assert chunks[0].text == first
    assert chunks[1].char_start == len(first) + 2


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (32, 0), (64, 0), (64, 8)])
@SETTINGS
@given(sentences=st.lists(sentence_strategy(1, 5), min_size=3, max_size=60))
def test_long_paragraph_is_cut_at_sentence_ends(max_tokens, overlap, sentences):
    """Sentences under half a window: every cut of a long paragraph falls after a sentence end."""
    window = max_tokens - 2
    sentences = [s for s in sentences if count_plain(s) < window // 2] or ["Alpha beta."]
    while count_plain(" ".join(sentences)) <= window:
        sentences = sentences * 2
    text = " ".join(sentences)
    chunks = chunker(max_tokens, overlap).split(text)
    assert len(chunks) > 1
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, overlap)
    sentence_starts = {0}
    pos = 0
    for s in sentences:
        pos += len(s) + 1
        sentence_starts.add(pos)
    for c in chunks:
        assert c.text[-1] in ".!?", f"chunk ends mid-sentence: {c.text!r}"
        if overlap == 0:
            assert c.char_start in sentence_starts, f"chunk starts mid-sentence: {c.text!r}"
        else:
            # Overlapping chunks start on a word boundary (punctuation counts as one).
            assert c.char_start == 0 or not (text[c.char_start - 1].isalnum() and text[c.char_start].isalnum())


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (32, 4), (64, 0)])
@SETTINGS
@given(words=st.lists(st.sampled_from([w for w in ENGLISH if "." not in w]), min_size=80, max_size=300))
def test_text_without_sentences_is_cut_between_words(max_tokens, overlap, words):
    text = " ".join(words)
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, overlap)
    for c in chunks:
        assert c.char_start == 0 or text[c.char_start - 1] == " ", f"chunk starts mid-word: {c.text!r}"
        assert c.char_end == len(text) or text[c.char_end] == " ", f"chunk ends mid-word: {c.text!r}"


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
def test_single_5000_character_word_is_split_under_the_limit(max_tokens):
    rng = random.Random(5000)
    words = {
        # Base64 without spaces: word pieces, split by "+" and "/" only.
        "base64": base64.b64encode(bytes(rng.randrange(256) for _ in range(3750))).decode(),
        # Words joined by punctuation: an identifier-like run.
        "dotted": ".".join(rng.choice(SENTENCE_WORDS) for _ in range(1000))[:5000],
        # CJK without spaces: every character is a word of its own.
        "cjk": "".join(rng.choice(CJK) for _ in range(5000)),
    }
    for name, word in words.items():
        assert len(word) == 5000 and " " not in word
        for overlap in (0, (max_tokens - 2) // 2 - 1):
            chunks = chunker(max_tokens, overlap).split(word)
            assert len(chunks) > 1, name
            check_basic(word, chunks, max_tokens)
            assert chunks[0].char_start == 0 and chunks[-1].char_end == 5000
    # Letters only: past the tokenizer's 100-character word limit it is one [UNK] token.
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(5000))
    chunks = chunker(max_tokens, 0).split(letters)
    check_basic(letters, chunks, max_tokens)
    assert [(c.char_start, c.char_end) for c in chunks] == [(0, 5000)]


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (32, 0), (64, 0)])
def test_cjk_text_is_cut_after_cjk_sentence_ends(max_tokens, overlap):
    rng = random.Random(7)
    sentences = ["".join(rng.choice(CJK) for _ in range(rng.randint(2, 5))) + "。" for _ in range(200)]
    text = "".join(sentences)
    ends = set()
    pos = 0
    for s in sentences:
        pos += len(s)
        ends.add(pos)
    chunks = chunker(max_tokens, overlap).split(text)
    check_basic(text, chunks, max_tokens)
    check_covers(text, chunks, overlap)
    assert all(c.char_end in ends for c in chunks)


# ---------------------------------------------------------------------------------------------
# Edge inputs and invalid arguments


@pytest.mark.parametrize("text", ["", " ", "\n\n\n", " \t\r\n\f\v ", "\u3000\u00a0", "\u200b\u200b", "\x00\x01\x7f"])
@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (256, 32)])
def test_empty_or_blank_text_gives_no_chunks(text, max_tokens, overlap):
    assert chunker(max_tokens, overlap).split(text) == []


@SETTINGS
@given(text=st.text(alphabet=" \t\n\r\f\v\u3000\u00a0\u2028\u2029\u200b", max_size=200))
def test_generated_whitespace_gives_no_chunks(text):
    assert chunker(32, 0).split(text) == []


def test_short_text_is_one_chunk_with_its_exact_span():
    text = "  Hello, world!  \n"
    chunks = chunker(256, 32).split(text)
    assert len(chunks) == 1
    c = chunks[0]
    assert (c.text, c.char_start, c.char_end, c.chunk_index) == ("Hello, world!", 2, 15, 0)
    assert c.n_tokens == count_with_specials("Hello, world!") == 6


def test_one_megabyte_single_line_text_is_chunked_quickly():
    rng = random.Random(1)
    vocab = ENGLISH + ["end.", "stop!", "why?", "co-op", "1,234", "naïve", "café", "ünïcödé"]
    parts, size = [], 0
    while size < 1_000_000:
        w = rng.choice(vocab)
        parts.append(w)
        size += len(w) + 1
    text = " ".join(parts)[:1_000_000]
    assert len(text) == 1_000_000 and "\n" not in text
    started = time.perf_counter()
    chunks = chunker(256, 32).split(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 20, f"1 MB took {elapsed:.1f} s"
    assert len(chunks) > 100
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    limit = info().max_seq_length
    assert limit == 256
    # The model's own (truncating) encoder sees the same count: nothing was truncated away.
    encoded = info().encode_batch([c.text for c in chunks])
    for c, ids in zip(chunks, encoded):
        assert len(ids) == c.n_tokens <= 256
        assert c.text == text[c.char_start : c.char_end]
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.char_start < nxt.char_start <= prev.char_end


@pytest.mark.parametrize("max_tokens,overlap", [(16, 7), (16, 8), (16, 100), (32, 15), (64, 31), (256, 127), (256, 1000), (16, -1), (256, -5)])
def test_overlap_of_half_the_window_or_more_is_rejected(max_tokens, overlap):
    with pytest.raises(ValueError):
        Chunker(info().tokenizer, max_tokens, overlap=overlap)


@pytest.mark.parametrize("max_tokens,overlap", [(16, 6), (32, 14), (64, 30), (256, 126), (256, 0)])
def test_largest_valid_overlap_is_accepted(max_tokens, overlap):
    c = Chunker(info().tokenizer, max_tokens, overlap=overlap)
    assert c.window == max_tokens - 2 and c.overlap == overlap
    check_basic(json_doc()[:3000], c.split(json_doc()[:3000]), max_tokens)


@pytest.mark.parametrize("max_tokens", [-1, 0, 1, 2, 3])
def test_max_tokens_without_room_for_text_is_rejected(max_tokens):
    with pytest.raises(ValueError):
        Chunker(info().tokenizer, max_tokens, overlap=0)


def test_smallest_valid_max_tokens_still_chunks():
    c = Chunker(info().tokenizer, 4, overlap=0)  # two text tokens next to [CLS] and [SEP]
    text = "alpha beta gamma delta river stone"
    chunks = c.split(text)
    check_basic(text, chunks, 4)
    check_covers(text, chunks, 0)


def _configured_tokenizer(truncation: int | None, padding_length: int | None):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(info().tokenizer.to_str())
    if truncation:
        tok.enable_truncation(truncation)
    if padding_length is not None:
        tok.enable_padding(length=padding_length)
    return tok


@pytest.mark.parametrize("truncation,padding_length", [(8, None), (None, None), (8, 0), (128, None)])
def test_chunker_ignores_truncation_on_the_given_tokenizer(truncation, padding_length):
    tok = _configured_tokenizer(truncation, padding_length)
    text = json_doc()[:4000]
    assert Chunker(tok, 64, overlap=8).split(text) == chunker(64, 8).split(text)
    # The caller's tokenizer is left as it was.
    assert (tok.truncation is not None) == bool(truncation)


def test_chunker_ignores_fixed_length_padding_on_the_given_tokenizer():
    # Chunker makes a copy with padding switched off (_plain_copy) but counts the special tokens
    # on the original: with padding to 300, encode("") has 300 ids and max_tokens=64 is refused.
    tok = _configured_tokenizer(None, 300)
    text = json_doc()[:4000]
    assert Chunker(tok, 64, overlap=8).split(text) == chunker(64, 8).split(text)


# ---------------------------------------------------------------------------------------------
# Same chunks as the whole-document chunker, in bounded memory


def reference_split(tokenizer, max_tokens: int, overlap: int, text: str, min_fill: float = 0.5) -> list[tuple]:
    """The chunker as it was before segmented tokenization: the whole document encoded at once,
    spans and ranks in Python lists. Returns (chunk_index, text, char_start, char_end, n_tokens)."""
    from tokenizers import Tokenizer

    from embedding_assets.lib.chunking import NO_CUT, PARAGRAPH, TOKEN, WORD, _gap_rank

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    window = max_tokens - len(tok.encode("", add_special_tokens=True).ids)
    offsets = tok.encode(text, add_special_tokens=False).offsets
    n = len(offsets)
    if n == 0:
        return []
    ranks = [TOKEN] + [_gap_rank(text, offsets[i - 1][0], offsets[i - 1][1], offsets[i][0]) for i in range(1, n)] + [PARAGRAPH]

    def cut_before(start, end):
        i = end
        while i > start + 1 and ranks[i] == NO_CUT:
            i -= 1
        if ranks[i] != NO_CUT:
            return i
        i = end
        while ranks[i] == NO_CUT:
            i += 1
        return i

    chunks, start = [], 0
    while start < n:
        limit = start + window
        if limit >= n:
            end = n
        else:
            lowest = start + max(1, int(window * min_fill))
            best, best_rank = limit, ranks[limit]
            for i in range(limit - 1, lowest - 1, -1):
                if ranks[i] > best_rank:
                    best, best_rank = i, ranks[i]
                    if best_rank == PARAGRAPH:
                        break
            end = cut_before(start, best)
        while True:
            a, b = offsets[start][0], offsets[end - 1][1]
            count = len(tok.encode(text[a:b], add_special_tokens=True).ids)
            if count <= max_tokens:
                break
            shorter = cut_before(start, max(start + 1, end - max(1, count - max_tokens)))
            if shorter >= end:
                break
            end = shorter
        chunks.append((len(chunks), text[a:b], a, b, count))
        if end >= n:
            break
        if overlap == 0:
            start = end
        else:
            nxt = end
            for i in range(max(start + 1, end - overlap), end):
                if ranks[i] >= WORD:
                    nxt = i
                    break
            start = nxt
    return chunks


def as_tuples(chunks: list[Chunk]) -> list[tuple]:
    return [(c.chunk_index, c.text, c.char_start, c.char_end, c.n_tokens) for c in chunks]


@functools.cache
def segmented(max_tokens: int, overlap: int, segment_chars: int, seam_chars: int, min_fill: float = 0.5) -> Chunker:
    return Chunker(info().tokenizer, max_tokens, overlap=overlap, min_fill=min_fill, segment_chars=segment_chars, seam_chars=seam_chars)


# Tiny segments put a seam every few words, so every kind of text meets many seams.
SEGMENTS = [(32, 8), (64, 16), (200, 64)]


@pytest.mark.parametrize("max_tokens,overlap", CONFIGS)
@SETTINGS
@given(text=texts(hangul=True), segment=st.sampled_from(SEGMENTS))
def test_same_chunks_as_the_whole_document_chunker(max_tokens, overlap, text, segment):
    expected = reference_split(info().tokenizer, max_tokens, overlap, text)
    assert as_tuples(chunker(max_tokens, overlap).split(text)) == expected
    assert as_tuples(segmented(max_tokens, overlap, *segment).split(text)) == expected


@pytest.mark.parametrize("min_fill", [0.0, 0.9])
@SETTINGS
@given(text=texts(long_words=False))
def test_same_chunks_as_the_whole_document_chunker_with_other_fills(min_fill, text):
    expected = reference_split(info().tokenizer, 32, 4, text, min_fill=min_fill)
    assert as_tuples(segmented(32, 4, 64, 16, min_fill).split(text)) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts(hangul=True, max_pieces=200), segment=st.sampled_from(SEGMENTS))
def test_segmented_tokens_are_the_whole_documents_tokens(text, segment):
    """The seams are invisible: the token spans and ids, segment by segment, are those of one encode."""
    c = segmented(64, 8, *segment)
    blocks = list(c._token_spans(text))
    spans = [(int(s), int(e)) for starts, ends, _ in blocks for s, e in zip(starts, ends)]
    whole = info().tokenizer.encode(text, add_special_tokens=False)
    assert spans == whole.offsets
    assert [int(i) for _, _, ids in blocks for i in ids] == whole.ids


@pytest.mark.parametrize("max_tokens,overlap", [(16, 3), (64, 0), (256, 32)])
@pytest.mark.parametrize("segment", [(4096, 1024), (300, 100), (256 * 1024, 2048)])
def test_real_documentation_text_is_chunked_as_before(max_tokens, overlap, segment):
    text = json_doc() * 3
    expected = reference_split(info().tokenizer, max_tokens, overlap, text)
    assert as_tuples(segmented(max_tokens, overlap, *segment).split(text)) == expected


@pytest.mark.parametrize(
    "name,text",
    [
        ("base64", base64.b64encode(random.Random(3).randbytes(2400)).decode()),
        ("letters-and-marks", "".join(random.Random(3).choices(string.ascii_letters + "+/=", k=3000))),
        ("one-letter-word", "p" * 3000),  # one [UNK]: the 100-character limit looks at the whole word
        ("one-long-word", "x" * 3000 + " tail words here"),
        ("cjk", "".join(random.Random(4).choice(CJK) for _ in range(2000))),
        ("hangul", (KOREAN * 40)),
        ("blank-lines", ("para one. \n \n" * 300)),
        ("newline-tails", "word.\n" * 500 + "end:\n  next"),
    ],
)
def test_awkward_seams_give_the_same_chunks(name, text):
    """Seams inside words, or with nowhere good to cut, fall back to a longer segment."""
    for max_tokens, overlap in [(16, 6), (64, 0)]:
        expected = reference_split(info().tokenizer, max_tokens, overlap, text)
        assert as_tuples(segmented(max_tokens, overlap, 64, 16).split(text)) == expected, name


def test_iter_split_is_lazy_and_split_is_its_list():
    text = json_doc() * 4
    c = segmented(64, 8, 2048, 512)
    calls = []
    original = c._spans
    c._spans = lambda t, lo, hi, encoding=None: calls.append((lo, hi)) or original(t, lo, hi, encoding)
    try:
        first = next(c.iter_split(text))
        assert max(hi for _, hi in calls) < len(text) // 2, "the first chunk must not tokenize the whole document"
    finally:
        del c._spans
    assert first == c.split(text)[0]
    assert c.split(text) == list(c.iter_split(text)) == chunker(64, 8).split(text)


def test_kept_ids_are_the_models_ids():
    c = Chunker(info().tokenizer, 64, overlap=8, keep_ids=True)
    chunks = c.split(json_doc()[:20000])
    assert chunks == chunker(64, 8).split(json_doc()[:20000])
    encoded = info().encode_batch([ch.text for ch in chunks])
    for ch, ids in zip(chunks, encoded):
        assert ch.input_ids.dtype.name == "int32" and ch.input_ids.tolist() == ids
    assert chunker(64, 8).split("hello world")[0].input_ids is None


def test_document_size_problem():
    from embedding_assets.lib.chunking import document_size_problem

    assert document_size_problem(10, None) is None
    assert document_size_problem(10, 10) is None
    reason = document_size_problem(2_000_001, 2_000_000)
    assert "2,000,001 characters" in reason and "2,000,000" in reason and "EMBEDDING_MAX_DOCUMENT_CHARS" in reason
    c = Chunker(info().tokenizer, 64, overlap=0, max_document_chars=5)
    assert c.size_problem("abcdef") and c.size_problem("abcde") is None
    assert chunker(64, 0).size_problem("x" * 10**6) is None


def test_chunking_a_large_document_stays_within_a_few_times_its_size():
    """Peak memory of chunking a 4 MB document, in a fresh process: the old chunker took ~200x the
    text (5 MB -> 1.19 GiB); now the tokens are held a segment at a time."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import json, pydoc, resource, sys
        from embedding_assets.lib.chunking import Chunker
        from embedding_assets.lib.encoders import load_tokenizer
        c = Chunker(load_tokenizer("bundled").tokenizer, 256, overlap=32)
        base = pydoc.render_doc(json, renderer=pydoc.plaintext)
        text = (base * (4_000_000 // len(base) + 1))[:4_000_000]
        list(c.iter_split(text[:300_000]))  # warm up: the tokenizer's own caches and arenas
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        chunks = sum(1 for _ in c.iter_split(text))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"extra": peak - before, "size": len(text.encode()), "chunks": chunks}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["chunks"] > 1000
    assert result["extra"] <= 10 * result["size"], f"chunking took {result['extra'] / 2**20:.0f} MiB for {result['size'] / 2**20:.1f} MiB of text"


class _CountingTokenizer:
    """The chunker's tokenizer, counting the characters it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.chars = tokenizer, 0

    def encode(self, text, **kwargs):
        self.chars += len(text)
        return self.tokenizer.encode(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_document_of_one_segment_is_tokenized_whole_once():
    """A document longer than one window but within one segment: the tokenization that found it
    too long for one chunk is the one the cuts are made on (only the chunks are encoded again)."""
    text = json_doc()[:30000]
    c = chunker(64, 8)
    counting = _CountingTokenizer(c.tokenizer)
    c.tokenizer = counting
    got = c.split(text)
    chunk_chars = sum(len(ch.text) for ch in got)
    assert counting.chars <= len(text) + chunk_chars + 64 * len(got), (counting.chars, len(text), chunk_chars)
    assert got == chunker(64, 8).split(text)


_ODD_PIECES = [
    "Delta", "lake.", "vector", " ", "  ", "\n", "\n\n", "\t", "\r\n", "chunk,", "token", "日本語", "über", "e\u0301", "A\u0308",
    "🎉", "👨\u200d👩\u200d👧", "x" * 120, "(a)", "-", "İstanbul", "ǅ", "ﬁ", "\u00a0", "\u3000", "\u2003", "\u2028", "\u0085",
    "\x0b", "\x0c", "\x00", "\x1f", "\ufffd", "[SEP]", "[CLS]x", "[MASK]", "5€", "a\u200bb", "ﾃｽﾄ", "한국어", "שלום", "مرحبا", "!!!", "...",
]


def _slow_twin(c: Chunker) -> Chunker:
    twin = Chunker(c.tokenizer, c.max_tokens, overlap=c.overlap, keep_ids=c.keep_ids, segment_chars=c.segment_chars, seam_chars=c.seam_chars)
    twin._word_local = None  # every chunk re-tokenized
    return twin


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_ODD_PIECES), min_size=1, max_size=400), st.sampled_from([(16, 3), (64, 8)]))
def test_chunks_between_whitespace_are_those_of_retokenizing_them(pieces, limits):
    """Under a BERT-style tokenizer, a chunk between two whitespace characters takes its tokens
    from the document's tokenization: the same chunks, counts and ids as re-tokenizing each."""
    text = "".join(pieces)
    fast = Chunker(info().tokenizer, limits[0], overlap=limits[1], keep_ids=True, segment_chars=256, seam_chars=64)
    assert fast._word_local is not None
    got, expected = fast.split(text), _slow_twin(fast).split(text)
    assert got == expected
    assert [x.input_ids.tolist() for x in got] == [y.input_ids.tolist() for y in expected]
    assert [x.input_ids.tolist() for x in got] == info().encode_batch([x.text for x in got])


def test_whitespace_bounded_chunks_are_not_tokenized_again():
    text = json_doc()[:30000]
    c = chunker(64, 8)
    counting = _CountingTokenizer(c.tokenizer)
    c.tokenizer = counting
    got = c.split(text)
    assert counting.chars < 1.2 * len(text), "most chunks end at whitespace: their tokens come from the document's"
    assert got == _slow_twin(chunker(64, 8)).split(text)


def test_other_tokenizers_re_tokenize_every_chunk():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    from embedding_assets.lib.chunking import _word_local

    bert = info().tokenizer
    assert _word_local(bert, 2) is not None
    spec = json.loads(bert.to_str())
    for change in (
        lambda s: s.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}),
        lambda s: s.update(normalizer={"type": "NFKC"}),
        lambda s: s["added_tokens"].append({**s["added_tokens"][0], "id": 30522, "content": "[NEW]", "rstrip": True}),
    ):
        changed = json.loads(json.dumps(spec))
        change(changed)
        assert _word_local(Tokenizer.from_str(json.dumps(changed)), 2) is None
    bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "Ġ": 2}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=True)
    assert _word_local(bpe, 0) is None
