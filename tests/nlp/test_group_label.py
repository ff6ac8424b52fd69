"""A cluster's UX/CX label comes from all its members' probabilities."""

from __future__ import annotations

from app.nlp.base import Evidence, UxCx
from app.nlp.uxcx import label_group


def member(label: str, probs: tuple[float, float, float], sub: str, *phrases: str) -> UxCx:
    return UxCx(
        label=label,
        probability=max(probs),
        probabilities=dict(zip(("UX", "CX", "none"), probs, strict=True)),
        subcategory=sub,
        evidence=tuple(Evidence(p, 0, len(p), 0.3) for p in phrases),
    )


def test_clear_group_label_mix_and_typical_phrases() -> None:
    group = label_group(
        [
            member("UX", (0.9, 0.05, 0.05), "account_access", "can't log in", "password"),
            member("UX", (0.8, 0.1, 0.1), "account_access", "Can't log in"),
            member("UX", (0.7, 0.2, 0.1), "bug", "error"),
            member("CX", (0.3, 0.6, 0.1), "support_responsiveness", "no reply"),
        ]
    )
    assert group is not None
    assert (group.label, group.leading) == ("UX", "UX")
    assert group.confidence == 0.675  # mean of 0.9, 0.8, 0.7, 0.3
    assert group.probabilities == {"UX": 0.675, "CX": 0.2375, "none": 0.0875}
    assert group.shares == {"UX": 0.75, "CX": 0.25, "none": 0.0}
    assert group.subcategories == {"account_access": 2, "bug": 1}
    # Carried by two members (case folded), so it leads; CX members' phrases are not UX evidence.
    assert group.evidence[0] == "can't log in" and "no reply" not in group.evidence


def test_split_group_is_mixed_but_names_the_leading_label() -> None:
    group = label_group(
        [
            member("UX", (0.55, 0.4, 0.05), "bug"),
            member("CX", (0.4, 0.55, 0.05), "billing"),
            member("UX", (0.6, 0.35, 0.05), "bug"),
        ]
    )
    assert group is not None
    assert group.label == "mixed" and group.leading == "UX" and group.confidence < 0.6


def test_no_members_no_label() -> None:
    assert label_group([]) is None
