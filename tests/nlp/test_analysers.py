"""Language detection, sentiment and the routing table on their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import DEFAULT_ROUTING_TABLE
from app.nlp.base import UxCxLabel
from app.nlp.language import LanguageDetector
from app.nlp.sentiment import load_sentiment_scorer
from app.nlp.uxcx import load_uxcx_classifier
from app.routing.table import RoutingTable


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector(0.8)


@pytest.mark.parametrize(
    ("text", "code", "supported"),
    [
        ("My order has not arrived and nobody replies to my emails", "en", True),
        ("Mi pedido no ha llegado todavía y nadie responde", "es", False),
        ("Je n'arrive pas à me connecter depuis la mise à jour", "fr", False),
        ("Das Paket ist beschädigt angekommen", "de", False),
    ],
)
def test_language(detector: LanguageDetector, text: str, code: str, supported: bool) -> None:
    lang = detector.detect(text)
    assert (lang.code, lang.supported) == (code, supported)
    assert 0.8 <= lang.confidence <= 1.0


def test_short_or_noisy_texts_count_as_english(detector: LanguageDetector) -> None:
    # langid guesses odd languages for tiny texts; those guesses must not switch analysis off.
    for text in ("ok", "thanks!", "@AcmeHelp 👍", "lol"):
        assert detector.detect(text).supported is True
    assert detector.detect("@AcmeHelp https://t.co/x").code == "und"


def test_unknown_backends_name_the_choices() -> None:
    with pytest.raises(ValueError, match="available: analysis, branch, vader"):
        load_sentiment_scorer("roberta")
    with pytest.raises(ValueError, match="available: analysis, linear, prototypes"):
        load_uxcx_classifier("gpt", embedder=None)  # type: ignore[arg-type]


def test_default_routing_table() -> None:
    table = RoutingTable.load(DEFAULT_ROUTING_TABLE)
    assert table.team_for("UX", "bug") == "product-engineering"
    assert table.team_for("CX", "billing") == "billing"
    assert table.team_for("CX", "delivery") == "logistics"
    assert table.team_for("CX", "support_quality") == "customer-support"
    assert table.team_for("none", "praise") is None
    assert table.team_for(None) == "triage"
    assert {str(label) for label in UxCxLabel} == {"UX", "CX", "none"}


def test_routing_first_match_wins_and_bad_files_fail(tmp_path: Path) -> None:
    good = tmp_path / "r.toml"
    good.write_text(
        'default_team = "desk"\n[[route]]\nlabel = "UX"\nsubcategory = "outage"\n'
        'team = "sre"\n[[route]]\nlabel = "UX"\nteam = "apps"\n'
    )
    table = RoutingTable.load(good)
    assert table.team_for("UX", "outage") == "sre"
    assert table.team_for("UX", "bug") == "apps"
    assert table.team_for("CX", "billing") == "desk"

    bad_label = tmp_path / "bad.toml"
    bad_label.write_text('[[route]]\nlabel = "ux"\nteam = "x"\n')
    with pytest.raises(ValueError, match="label 'ux'"):
        RoutingTable.load(bad_label)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[route]\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        RoutingTable.load(broken)
    with pytest.raises(ValueError, match="does not exist"):
        RoutingTable.load(tmp_path / "missing.toml")
