"""Sentence spans and encoder chunks."""

from __future__ import annotations

from app.nlp.segment import MAX_RUN, sentence_spans, tame_runs, token_chunks


def pieces(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def test_sentences() -> None:
    assert pieces("Thanks for the help! But the app still crashes.") == [
        "Thanks for the help!",
        "But the app still crashes.",
    ]
    assert pieces("Hi.\n\nMy order is late... Where is it?? Thanks") == [
        "Hi.",
        "My order is late...",
        "Where is it??",
        "Thanks",
    ]
    assert pieces("one sentence, no stop") == ["one sentence, no stop"]
    assert pieces('He said "no way." Then left.') == ['He said "no way."', "Then left."]
    assert pieces("") == [] and pieces("   ") == []
    # Fragments with no words glue onto the sentence before them.
    assert pieces("Really? ?!") == ["Really? ?!"]


def test_token_chunks_respect_room_and_prefer_sentence_ends() -> None:
    text = "Aa bb. Cc dd ee. Ff gg hh ii jj."
    # One token per word and per full stop, as a WordPiece tokenizer would give.
    offsets = []
    pos = 0
    for word in text.split():
        core = word.rstrip(".")
        offsets.append((pos, pos + len(core)))
        if word.endswith("."):
            offsets.append((pos + len(core), pos + len(word)))
        pos += len(word) + 1
    chunks = token_chunks(text, offsets, room=6)
    assert [text[s:e] for s, e in chunks] == ["Aa bb.", "Cc dd ee.", "Ff gg hh ii jj."]
    # Without sentence ends in reach, chunks end between words.
    flat = "aa bb cc dd ee ff gg"
    flat_offsets = [(i * 3, i * 3 + 2) for i in range(7)]
    assert [flat[s:e] for s, e in token_chunks(flat, flat_offsets, room=3)] == [
        "aa bb cc",
        "dd ee ff",
        "gg",
    ]


def test_sentences_of_long_whitespace_runs() -> None:
    # The line-break branch starts at the break: 20,000 spaces are read once, not once per space.
    text = "a" + " " * 20_000 + "b"
    assert sentence_spans(text) == [(0, len(text))]
    text = "First one.\n" + " " * 20_000 + "\n Second one here."
    assert pieces(text) == ["First one.", "Second one here."]


def test_tame_runs_keeps_offsets() -> None:
    text = "help " + "😀" * (MAX_RUN + 1) + " now " + "😀" * MAX_RUN
    tamed = tame_runs(text)
    assert len(tamed) == len(text)
    assert tamed == "help " + "x" * (MAX_RUN + 1) + " now " + "😀" * MAX_RUN
    assert tame_runs("short text") == "short text"
