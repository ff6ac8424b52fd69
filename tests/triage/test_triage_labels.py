"""Clear and hard cases of every label through POST /v1/triage with the default analysers (the
analysis branch). The texts are written for the project; the hard ones follow the labelling
guide's hard calls (fixtures/uxcx/README.md) and the kinds of real messages the first labeller
got wrong. The `none` decision is the problem head's calibrated threshold, not an argmax."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.nlp.analysis import AnalysisBranch
from app.nlp.analyzer import Analyzer

CLEAR = [
    # UX: the product fails.
    ("The app crashes every time I open my profile since the update", "UX", "compatibility"),
    ("I can't log in, the password reset email never arrives", "UX", "account_access"),
    ("Your website has been down all morning, nothing loads", "UX", "outage"),
    ("The app is so slow, every page takes a minute to load", "UX", "performance"),
    # CX: how the company serves the customer.
    ("You charged my card twice this month, I want a refund", "CX", "billing"),
    ("My order is two weeks late and the parcel tracking hasn't moved", "CX", "delivery"),
    ("Nobody from your support team has answered my emails for a week", "CX", None),
    ("My flight was cancelled and nobody offered to rebook me", "CX", "travel_disruption"),
    # none: no problem.
    ("Thank you so much, your team was great and it all works now!", "none", None),
    ("Love the new playlist feature, great job!", "none", None),
    ("Does the premium plan include podcasts?", "none", "question"),
]

HARD = [
    # Insults at customer service with no product word: a problem, CX.
    ("worst customer service ever #useless", "CX"),
    # A refused warranty is the shop's handling: CX.
    ("They refused to honour the warranty on my blender, it's four months old", "CX"),
    # Food that arrives cold: delivery, CX.
    ("Ordered dinner through you again and it arrived stone cold", "CX"),
    # A physical product that fails is UX.
    ("The gearbox on my car failed at 70k miles, that should never happen", "UX"),
    ("Really regret buying this phone, the battery is dead by lunchtime", "UX"),
    # A reply that is only links: unhelpful support, CX.
    ("again only links in your reply. please help me", "CX"),
    # A store card that cannot be used online: a product limitation, UX.
    ("Why can I not use my store card on your website?", "UX"),
    # Sarcastic thanks mock a complaint.
    ("Thanks for the three hour delay and not a word from the crew", "CX"),
    # A question that reveals a problem is that problem.
    ("why does the app keep logging me out every five minutes??", "UX"),
    # A reply that only gives details is no problem.
    ("iPhone 8, iOS 11.2", "none"),
    # A problem reported as solved.
    ("Never mind, figured it out, it works now", "none"),
]


def _threshold(analyzer: Analyzer) -> float:
    assert isinstance(analyzer.uxcx, AnalysisBranch)
    return analyzer.uxcx.heads.threshold


def _check(body: dict, threshold: float) -> None:
    u = body["uxcx"]
    assert body["analysers"]["uxcx"] == body["analysers"]["sentiment"] == "analysis:v1"
    assert abs(sum(u["probabilities"].values()) - 1) < 1e-3
    # The problem head decides `none` with its own threshold.
    assert u["problem_probability"] == pytest.approx(1 - u["probabilities"]["none"], abs=2e-4)
    assert (u["label"] == "none") == (u["problem_probability"] < threshold)
    if u["label"] != "none":
        other = "CX" if u["label"] == "UX" else "UX"
        assert u["probabilities"][u["label"]] >= u["probabilities"][other]


@pytest.mark.parametrize(("text", "label", "subcategory"), CLEAR, ids=[c[0][:40] for c in CLEAR])
def test_clear_cases(
    client: TestClient, analyzer: Analyzer, text: str, label: str, subcategory: str | None
) -> None:
    body = client.post("/v1/triage", json={"text": text}).json()
    _check(body, _threshold(analyzer))
    assert body["uxcx"]["label"] == label
    if subcategory:
        assert body["uxcx"]["subcategory"] == subcategory


# Hard cases the committed branch (models/analysis/v1) gets wrong, listed in README.md (UX/CX,
# known misses): both answered `none`. Strict: a retrained branch that gets one right fails
# here until the case is moved back among the others.
KNOWN_MISSES = {
    "Ordered dinner through you again and it arrived stone cold",
    "again only links in your reply. please help me",
}


@pytest.mark.parametrize(
    ("text", "label"),
    [
        pytest.param(
            *case,
            marks=[pytest.mark.xfail(strict=True, reason="a known miss of analysis v1")]
            if case[0] in KNOWN_MISSES
            else [],
            id=case[0][:40],
        )
        for case in HARD
    ],
)
def test_hard_cases(client: TestClient, analyzer: Analyzer, text: str, label: str) -> None:
    body = client.post("/v1/triage", json={"text": text}).json()
    _check(body, _threshold(analyzer))
    assert body["uxcx"]["label"] == label


def test_every_label_has_clear_and_hard_cases() -> None:
    for label in ("UX", "CX", "none"):
        assert sum(c[1] == label for c in CLEAR) >= 3
        assert sum(c[1] == label for c in HARD) >= 2
