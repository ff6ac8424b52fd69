"""POST /v1/triage through the real analysers: values, routing, bad input, nothing stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.nlp.analyzer import Analyzer
from app.nlp.segment import MAX_RUN
from tests.helpers import count_rows


@pytest.mark.parametrize(
    ("text", "label", "team"),
    [
        (
            "The app crashes every time I open my profile since the update",
            "UX",
            "product-engineering",
        ),
        ("I can't log in, the password reset email never arrives", "UX", "product-engineering"),
        ("You charged my card twice this month, I want a refund", "CX", "billing"),
        ("My order is two weeks late and the parcel tracking hasn't moved", "CX", "logistics"),
        (
            "Nobody from your support team has answered my emails for a week",
            "CX",
            "customer-support",
        ),
        ("Thank you so much, your team was great and it all works now!", "none", None),
    ],
)
def test_triage_labels_and_routes(
    client: TestClient, engine: Engine, text: str, label: str, team: str | None
) -> None:
    r = client.post("/v1/triage", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["uxcx"]["label"] == label
    assert body["uxcx"]["probability"] == max(body["uxcx"]["probabilities"].values())
    assert body["team"] == team
    assert body["language"] == {**body["language"], "code": "en", "supported": True}
    assert count_rows(engine, "ticket") == 0  # triage stores nothing


def test_triage_sentiment_signs(client: TestClient) -> None:
    pos = client.post("/v1/triage", json={"text": "Love it, brilliant service, thank you!"}).json()
    neg = client.post("/v1/triage", json={"text": "Terrible, awful experience, I hate this"}).json()
    assert pos["sentiment"]["label"] == "positive" and pos["sentiment"]["score"] > 0.5
    assert neg["sentiment"]["label"] == "negative" and neg["sentiment"]["score"] < -0.5
    assert -1 <= neg["sentiment"]["score"] <= 1


def test_triage_uses_subject(client: TestClient) -> None:
    r = client.post(
        "/v1/triage", json={"subject": "Refund", "text": "still waiting", "channel": "ticket"}
    ).json()
    assert r["uxcx"]["label"] == "CX"


def test_non_english_is_flagged_not_judged(client: TestClient) -> None:
    r = client.post("/v1/triage", json={"text": "Mein Paket ist seit zwei Wochen nicht angekommen"})
    body = r.json()
    assert r.status_code == 200
    assert body["language"]["code"] == "de" and body["language"]["supported"] is False
    assert body["sentiment"] is None and body["uxcx"] is None
    assert body["team"] == "triage" and "not English" in body["note"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"text": ""}, 422, "empty_text"),
        ({"text": "   \n"}, 422, "empty_text"),
        ({}, 422, "validation_error"),
        ({"text": 42}, 422, "validation_error"),
        ({"text": "ok", "channel": "pigeon"}, 422, "validation_error"),
        ({"text": "x" * 20_001}, 413, "text_too_large"),
        ({"text": "ok", "subject": "s" * 1_001}, 413, "text_too_large"),
    ],
)
def test_triage_bad_input(client: TestClient, payload: dict, status: int, code: str) -> None:
    r = client.post("/v1/triage", json=payload)
    assert r.status_code == status and r.json()["code"] == code


def test_triage_malformed_body(client: TestClient) -> None:
    r = client.post(
        "/v1/triage", content=b'{"text": "caf\xe9"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_utf8"
    r = client.post(
        "/v1/triage", content=b'{"text": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Thank you so much, your team was fantastic and it all works now!", "positive"),
        ("Loving the new update, everything feels faster 😍", "positive"),
        ("This is a disgrace, worst airline I have ever flown with", "negative"),
        ("Your app deleted all my photos and support won't help. Furious.", "negative"),
        ("Can you tell me which plan includes international calls?", "neutral"),
        ("I placed order 5521 on Tuesday and chose standard delivery.", "neutral"),
    ],
)
def test_triage_sentiment_labels(client: TestClient, text: str, label: str) -> None:
    body = client.post("/v1/triage", json={"text": text}).json()
    s = body["sentiment"]
    assert s["label"] == label
    assert -1 <= s["score"] <= 1
    assert (
        abs(s["score"] - (s["probabilities"]["positive"] - s["probabilities"]["negative"])) < 1e-3
    )
    assert body["analysers"]["sentiment"] == "analysis:v1"


def test_triage_mixed_ticket_is_negative(client: TestClient) -> None:
    text = (
        "Hi, thanks a lot for the quick reply yesterday, really appreciated! "
        "Unfortunately the app still crashes every time I log in."
    )
    s = client.post("/v1/triage", json={"text": text}).json()["sentiment"]
    assert s["label"] == "negative"
    worst = s["most_negative_sentence"]
    assert worst["text"] == "Unfortunately the app still crashes every time I log in."
    assert text[worst["start"] : worst["end"]] == worst["text"]
    assert worst["label"] == "negative" and worst["score"] <= s["score"] < 0


def test_triage_sentence_offsets_include_the_subject(client: TestClient) -> None:
    body = client.post(
        "/v1/triage",
        json={"subject": "Great agent", "text": "Sam was great. Sadly my refund never arrived."},
    ).json()
    worst = body["sentiment"]["most_negative_sentence"]
    analysed = "Great agent\nSam was great. Sadly my refund never arrived."
    assert (
        analysed[worst["start"] : worst["end"]] == worst["text"] == "Sadly my refund never arrived."
    )


def test_emoji_flood_is_analysed_and_spacy_sees_bounded_words(
    client: TestClient, analyzer: Analyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # spaCy's tokenizer re-slices a run without spaces once per emoji it splits off: 20,000
    # emoji held the GIL for 47 s. A longer run than MAX_RUN reaches it as one plain word.
    nlp = analyzer.uxcx.evidence.nlp  # type: ignore[attr-defined]
    seen: list[str] = []
    make_doc = nlp.make_doc
    monkeypatch.setattr(nlp, "make_doc", lambda text: seen.append(text) or make_doc(text))
    text = "my order never arrived " + "😡" * 19_950 + " refund please"
    r = client.post("/v1/triage", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["uxcx"]["label"] in ("UX", "CX", "none")
    for e in body["uxcx"]["evidence"]:
        assert "😡" not in e["text"] and e["end"] - e["start"] <= MAX_RUN
    assert len(seen) == 1 and len(seen[0]) == len(text)
    long_runs = [run for run in seen[0].split() if len(run) > MAX_RUN]
    assert [set(run) for run in long_runs] == [{"x"}]
