"""Readable cluster titles and key phrases: class-based TF-IDF over spaCy lemmas and noun chunks.

Each cluster is one class; its terms are content lemmas (no stop words, handles, URLs, numbers
or punctuation), pairs of adjacent content lemmas, and noun chunks reduced to their content
lemmas. c-TF-IDF (term frequency in the class times log(1 + average class size / frequency
across classes)) ranks the terms that set a cluster apart; the title is the best phrase.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from app.nlp.segment import MAX_RUN

_KEEP_POS = {"NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM", "X", "INTJ"}


def _content(token: Any, stop_words: set[str]) -> bool:
    text = token.text
    return (
        token.is_alpha
        and 1 < len(text) <= MAX_RUN  # longer: a run tame_runs replaced
        and token.lower_ not in stop_words
        and token.lemma_.lower() not in stop_words
        and not text.startswith(("@", "#"))
        and not token.like_url
        and token.pos_ in _KEEP_POS
    )


def doc_terms(doc: Any, stop_words: set[str]) -> list[str]:
    """Terms of one parsed message: lemmas, adjacent lemma pairs, noun-chunk phrases."""
    terms: list[str] = []
    previous: str | None = None
    for token in doc:
        if _content(token, stop_words):
            lemma = token.lemma_.lower()
            terms.append(lemma)
            if previous is not None and previous != lemma:
                terms.append(f"{previous} {lemma}")
            previous = lemma
        elif not token.is_space:
            previous = None
    for chunk in doc.noun_chunks:
        words = [t.lemma_.lower() for t in chunk if _content(t, stop_words)]
        if 2 <= len(words) <= 3:
            terms.append(" ".join(words))
    return terms


def key_phrases(
    docs_per_cluster: Sequence[Sequence[Any]], *, top: int = 5, stop_words: set[str]
) -> list[list[str]]:
    """The `top` most distinctive phrases per cluster (best first), by c-TF-IDF."""
    counts = [Counter(t for doc in docs for t in set(doc_terms(doc, stop_words)))
              for docs in docs_per_cluster]  # fmt: skip
    across: Counter[str] = Counter()
    for c in counts:
        across.update(c)
    avg = sum(sum(c.values()) for c in counts) / max(1, len(counts))
    out = []
    for c in counts:
        total = sum(c.values()) or 1
        scored = {
            t: (n / total) * math.log(1 + avg / across[t]) * (1.15 if " " in t else 1.0)
            for t, n in c.items()
            if n >= 2 or len(c) < 20
        }
        ranked = sorted(scored, key=lambda t: (-scored[t], t))
        chosen: list[str] = []
        for term in ranked:
            words = set(term.split())
            # Skip a phrase whose words an already chosen phrase says.
            if any(words <= set(c.split()) for c in chosen):
                continue
            chosen.append(term)
            if len(chosen) == top:
                break
        out.append(chosen)
    return out


def title_for(phrases: Sequence[str]) -> str:
    """A short title: the best phrase, with the next one when the best is a single word."""
    if not phrases:
        return "(no title)"
    title = phrases[0]
    if " " not in title and len(phrases) > 1:
        title = f"{title}, {phrases[1]}"
    return title[:255]
