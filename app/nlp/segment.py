"""Sentence spans, for per-sentence sentiment and for cutting long texts into encoder chunks."""

from __future__ import annotations

import re
from collections.abc import Sequence

# A sentence ends at . ! ? or … (possibly repeated, possibly followed by closing quotes or
# brackets) before whitespace, or at a line break. Abbreviations like "e.g. this" may split
# early; for scoring sentiment per sentence that costs little. Both branches start at a fixed
# character (the punctuation, the line break), so a search is linear in the text: a branch that
# may start with whitespace, like the earlier `\s*\n+`, rescans a run of spaces from each of
# its positions (20,000 spaces took 3 s). Whitespace before a break is trimmed below.
_BOUNDARY = re.compile(r"(?<=[.!?…])([\"')\]]*)\s+|\n\s*")
_MIN_CHARS = 3
# Longest run without whitespace handed to spaCy's tokenizer as it is. Its prefix and suffix
# rules re-slice a run once per piece they split off, so a run of n emoji costs n^2 (20,000
# took 47 s, holding the GIL). The encoder's WordPiece tokenizer reads a run this long as one
# unknown token anyway (max_input_chars_per_word is 100).
MAX_RUN = 100
_LONG_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences in `text`, whitespace trimmed."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        spans.append((start, m.start() + len(m.group(1) or "")))
        start = m.end()
    spans.append((start, len(text)))
    out: list[tuple[int, int]] = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e - s == 0:
            continue
        # Fragments like "ok." or "?" glue onto the sentence before them.
        if out and (e - s < _MIN_CHARS or not any(ch.isalnum() for ch in text[s:e])):
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def token_chunks(text: str, offsets: Sequence[tuple[int, int]], room: int) -> list[tuple[int, int]]:
    """Character spans of consecutive chunks of at most `room` tokens (`offsets` per token).

    A chunk ends at a sentence boundary when one fits, otherwise at a word boundary, so a long
    text is encoded in pieces rather than cut off at the encoder's limit.
    """
    sentence_ends = {e for _, e in sentence_spans(text)}
    spans: list[tuple[int, int]] = []
    first = 0  # index of the first token of the current chunk
    n = len(offsets)
    while first < n:
        last = min(first + room, n) - 1  # furthest token that fits
        if last < n - 1:
            cut = next((t for t in range(last, first, -1) if offsets[t][1] in sentence_ends), None)
            if cut is None:
                # A new word starts where there is a gap before the next token.
                cut = next(
                    (t for t in range(last, first, -1) if offsets[t + 1][0] > offsets[t][1]), None
                )
            last = cut if cut is not None else last
        spans.append((offsets[first][0], offsets[last][1]))
        first = last + 1
    return spans


def tame_runs(text: str, *, filler: str = "x") -> str:
    """`text` with every run of more than MAX_RUN non-space characters replaced by as many
    `filler` characters, so character offsets stay the same and a tokenizer sees one plain word
    where it would split a long run piece by piece."""
    if len(text) <= MAX_RUN:
        return text
    return _LONG_RUN.sub(lambda m: filler * len(m.group()), text)
