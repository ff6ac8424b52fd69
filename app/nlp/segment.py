"""Sentence spans, for per-sentence sentiment and for cutting long texts into encoder chunks."""

from __future__ import annotations

import re
from collections.abc import Sequence

# A sentence ends at . ! ? or … (possibly repeated, possibly followed by closing quotes or
# brackets) before whitespace, or at a line break. Abbreviations like "e.g. this" may split
# early; for scoring sentiment per sentence that costs little.
_BOUNDARY = re.compile(r"(?<=[.!?…])([\"')\]]*)\s+|\s*\n+\s*")
_MIN_CHARS = 3


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
