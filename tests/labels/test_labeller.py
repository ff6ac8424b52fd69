"""UX/CX through the API: clear cases of every sub-category (the v1 labeller, and the analysis
branch that serves by default), evidence, routing, artifacts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import DEFAULT_UXCX_ARTIFACT, Settings
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.nlp.loader import load_analyzer
from app.nlp.uxcx import ArtifactError, LinearUxCx
from tests.helpers import AUTH

# Clear cases, two per sub-category, written for this test (not in the training fixtures).
CLEAR = [
    ("UX", "bug", "The app crashes with error 500 every time I press save."),
    ("UX", "outage", "Your website is down, nothing loads for anyone in our office."),
    ("UX", "performance", "The dashboard takes over a minute to load, everything is so slow."),
    ("UX", "usability", "I can't find where to change my email, the settings menu is confusing."),
    ("UX", "account_access", "I can't log in, the verification code never arrives."),
    ("UX", "compatibility", "Since the latest update the app no longer syncs with my laptop."),
    ("UX", "feature_request", "Please add a dark mode, it's the one feature missing."),
    ("CX", "support_responsiveness", "I emailed support five days ago and still no reply."),
    ("CX", "support_quality", "The agent was rude and pasted a canned answer that didn't help."),
    ("CX", "delivery", "My parcel arrived damaged and two items were missing."),
    ("CX", "billing", "I was charged twice this month and my refund hasn't come through."),
    ("CX", "cancellation", "I want to cancel my subscription but you charge a termination fee."),
    ("CX", "staff", "The staff at your store ignored me and the queue took an hour."),
    ("CX", "travel_disruption", "My flight was cancelled and my luggage is lost."),
    ("none", "praise", "Love the new design, great job team!"),
    ("none", "thanks", "Thanks for sorting that out so quickly, all working now."),
    ("none", "question", "Do you ship to Canada?"),
    ("none", "chit_chat", "Happy Friday everyone, have a lovely weekend!"),
]
MORE = [
    (
        "UX",
        "bug",
        "Every time I upload a photo the page says 'Something went wrong' and nothing saves.",
    ),
    ("UX", "outage", "Is the service down? None of my devices can connect since this morning."),
    ("UX", "performance", "Search results take forever and the app lags when I scroll."),
    (
        "UX",
        "usability",
        "The new menu makes no sense, it took me ten minutes to find the export button.",
    ),
    ("UX", "account_access", "My password reset link says expired every time, I'm locked out."),
    ("UX", "compatibility", "The app stopped working on my Android tablet after the last update."),
    ("UX", "feature_request", "Would love an option to schedule posts in advance, please add it."),
    ("CX", "support_responsiveness", "Been on hold for 50 minutes and nobody has picked up."),
    (
        "CX",
        "support_quality",
        "One agent told me one thing, the next said the opposite; nobody helped.",
    ),
    ("CX", "delivery", "The courier left my package at the wrong address and now it's gone."),
    ("CX", "billing", "Why did my monthly price go up without any notice?"),
    (
        "CX",
        "cancellation",
        "You made me call three times just to close my account, ridiculous policy.",
    ),
    ("CX", "staff", "The cashier was rude to my elderly mother and laughed at her."),
    ("CX", "travel_disruption", "Our train was delayed three hours and we missed the connection."),
    ("none", "praise", "Best customer service I've ever had, you guys rock!"),
    ("none", "thanks", "Thank you, the refund arrived today."),
    ("none", "question", "What are your opening hours on Sunday?"),
    ("none", "chit_chat", "Watching the match tonight with the whole family, can't wait!"),
]


@pytest.fixture(scope="module")
def v1_analyzer() -> Analyzer:
    """The v1 labeller (UXCX_BACKEND=linear) beside the v1 sentiment branch."""
    return load_analyzer(
        Settings(_env_file=None, uxcx_backend="linear", sentiment_backend="branch")  # type: ignore[call-arg]
    )


def test_clear_cases_of_every_subcategory(
    make_settings: Callable[..., Settings], v1_analyzer: Analyzer
) -> None:
    """The v1 labeller: every label right; every sub-category recognised in at least one of its
    two cases, and most sub-categories right overall (its held-out sub-category accuracy is
    about 0.84)."""
    right_sub: dict[str, int] = {}
    misses = []
    app = create_app(make_settings(uxcx_backend="linear"), analyzer=v1_analyzer)
    with TestClient(app, headers=AUTH) as client:
        results = [
            client.post("/v1/triage", json={"text": text}).json() for _, _, text in CLEAR + MORE
        ]
    for (label, subcategory, text), body in zip(CLEAR + MORE, results, strict=True):
        assert body["analysers"]["uxcx"] == "linear:v1"
        u = body["uxcx"]
        assert u["label"] == label, (text, u)
        assert u["probability"] > 0.7 and 0 < u["subcategory_probability"] <= 1
        assert abs(sum(u["probabilities"].values()) - 1) < 1e-3
        assert u["evidence"], "a decision always comes with evidence"
        for e in u["evidence"]:
            assert text[e["start"] : e["end"]] == e["text"] and 0 < e["weight"] <= 1
        ok = u["subcategory"] == subcategory
        right_sub[subcategory] = right_sub.get(subcategory, 0) + ok
        if not ok:
            misses.append((subcategory, u["subcategory"], text))
    assert all(right_sub.values()), misses
    assert len(misses) <= 4, misses


# The analysis branch's misses among these cases, measured on models/analysis/v1 and listed in
# README.md (UX/CX, known misses): `none` for the sync failure (P(problem) 0.547 against its
# 0.55 threshold) and the rude cashier, UX for a price rise. Strict: once a retrained branch
# gets one right, this fails until the case is moved back among the others.
ANALYSIS_MISSES = {
    "Since the latest update the app no longer syncs with my laptop.",
    "Why did my monthly price go up without any notice?",
    "The cashier was rude to my elderly mother and laughed at her.",
}


@pytest.mark.parametrize(
    ("label", "subcategory", "text"),
    [
        pytest.param(
            *case,
            marks=[pytest.mark.xfail(strict=True, reason="a known miss of analysis v1")]
            if case[2] in ANALYSIS_MISSES
            else [],
            id=f"{case[0]}-{case[1]}-{case[2][:24]}",
        )
        for case in CLEAR + MORE
    ],
)
def test_clear_cases_on_the_analysis_branch(
    client: TestClient, label: str, subcategory: str, text: str
) -> None:
    body = client.post("/v1/triage", json={"text": text}).json()
    u = body["uxcx"]
    assert body["analysers"]["uxcx"] == "analysis:v1"
    assert abs(sum(u["probabilities"].values()) - 1) < 1e-3
    assert u["evidence"], "a decision always comes with evidence"
    for e in u["evidence"]:
        assert text[e["start"] : e["end"]] == e["text"] and 0 < e["weight"] <= 1
    assert u["label"] == label, u


def test_analysis_branch_sub_categories_of_the_clear_cases(client: TestClient) -> None:
    """Sub-category right for most clear cases whose label is right (27 of 33 measured; the
    real-text dev split's rate where the label is right is 0.79)."""
    right = total = 0
    for label, subcategory, text in CLEAR + MORE:
        u = client.post("/v1/triage", json={"text": text}).json()["uxcx"]
        if u["label"] == label:
            total += 1
            right += u["subcategory"] == subcategory
    assert total >= 33 and right / total >= 0.79, (right, total)


def test_evidence_points_at_the_right_words(client: TestClient) -> None:
    subject = "Locked out"
    text = "Hi team, I can't log in since Monday: the verification code never arrives. Thanks, Ann"
    body = client.post("/v1/triage", json={"subject": subject, "text": text}).json()
    analysed = f"{subject}\n{text}"
    spans = body["uxcx"]["evidence"]
    words = [analysed[e["start"] : e["end"]] for e in spans]
    assert body["uxcx"]["subcategory"] == "account_access"
    assert any("log in" in w or "verification" in w for w in words[:2]), words
    # Greetings, names and sign-offs do not drive the decision.
    assert not {"Hi", "Ann", "Monday"} & set(words)
    assert spans == sorted(spans, key=lambda e: -e["weight"])


def test_stored_analysis_carries_evidence(client: TestClient, worker) -> None:  # noqa: ANN001
    item = {
        "source": "api",
        "external_id": "E-1",
        "subject": "Order 1182",
        "body": "My parcel still hasn't arrived after three weeks and tracking shows nothing.",
    }
    tid = client.post("/v1/tickets", json=item).json()["data"][0]["id"]
    worker.drain()
    t = client.get(f"/v1/tickets/{tid}").json()
    u = t["analysis"]["uxcx"]
    analysed = f"{item['subject']}\n{item['body']}"
    assert (u["label"], u["subcategory"]) == ("CX", "delivery")
    assert t["label"] == {**t["label"], "label": "CX", "team": "logistics", "source": "model"}
    assert u["evidence"] and all(
        analysed[e["start"] : e["end"]] == e["text"] for e in u["evidence"]
    )


def test_routing_table_change_changes_the_team(
    make_settings: Callable[..., Settings], analyzer: Analyzer, tmp_path: Path
) -> None:
    table = tmp_path / "routes.toml"
    table.write_text(
        'default_team = "desk"\n'
        '[[route]]\nlabel = "CX"\nsubcategory = "billing"\nteam = "finance-ops"\n'
        '[[route]]\nlabel = "CX"\nteam = "care"\n'
    )
    app = create_app(make_settings(routing_table=table), analyzer=analyzer)
    with TestClient(app, headers=AUTH) as c:
        billing = c.post("/v1/triage", json={"text": CLEAR[10][2]}).json()
        assert billing["team"] == "finance-ops"
        late = c.post("/v1/triage", json={"text": CLEAR[9][2]}).json()
        assert late["team"] == "care"
        crash = c.post("/v1/triage", json={"text": CLEAR[0][2]}).json()
        assert crash["team"] == "desk"  # no UX rule: the default team
        assert c.get("/v1/labels").json()["teams"]["CX"]["billing"] == "finance-ops"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[[route]]\nlabel = "UX"\nsubcategory = "billing"\nteam = "x"\n', "subcategory 'billing'"),
        ('[[route]]\nlabel = "CX"\nteem = "x"\nteam = "y"\n', "unknown keys"),
        ('[[route]]\nlabel = "CX"\n', "needs a team"),
        ("default_team = 3\n", "default_team must be a string"),
    ],
)
def test_bad_routing_file_stops_start_up(
    make_settings: Callable[..., Settings],
    analyzer: Analyzer,
    tmp_path: Path,
    content: str,
    message: str,
) -> None:
    table = tmp_path / "routes.toml"
    table.write_text(content)
    app = create_app(make_settings(routing_table=table), analyzer=analyzer)
    with pytest.raises(ValueError, match=message), TestClient(app):
        pass


def test_broken_artifacts_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="train-uxcx"):
        LinearUxCx(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_UXCX_ARTIFACT, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["classes"] = cfg["classes"][:-1]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="disagree"):
        LinearUxCx(broken)
    cfg["classes"] = [["UX", "teleport"]] + json.loads(
        (DEFAULT_UXCX_ARTIFACT / "config.json").read_text()
    )["classes"][1:]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="unknown classes"):
        LinearUxCx(broken)
    with pytest.raises(ArtifactError, match="another encoder"):
        LinearUxCx(DEFAULT_UXCX_ARTIFACT, encoder_fingerprint="0" * 64)
