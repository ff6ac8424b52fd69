"""Analyse one text synchronously, with the same analysers the worker uses."""

from __future__ import annotations

from dataclasses import asdict

from app.clusters.service import ClusterIndex
from app.core.config import Settings
from app.core.limits import optional_text, required_text
from app.nlp.analyzer import Analyzer, compose_text
from app.routing.table import RoutingTable
from app.tickets.schemas import LanguagePublic, SentimentPublic, UxCxPublic
from app.triage.schemas import KnownIssue, TriagePublic, TriageRequest


def check(request: TriageRequest, *, settings: Settings) -> str:
    """The text to analyse, or a 4xx that says what is wrong."""
    text = required_text(request.text, what="text", limit=settings.max_body_chars)
    subject = optional_text(request.subject, what="subject", limit=settings.max_subject_chars)
    return compose_text(subject, text)


def triage(
    text: str,
    *,
    analyzer: Analyzer,
    routing: RoutingTable,
    clusters: ClusterIndex | None = None,
    min_cosine: float = 0.5,
) -> TriagePublic:
    """Analyse `text`, route it, and name the known issue (cluster) it is part of."""
    result = analyzer.analyze([text])[0]
    hit = clusters.nearest(result.embedding[None, :], min_cosine)[0] if clusters else None
    s, u, lang = result.sentiment, result.uxcx, result.language
    note = None
    if not lang.supported:
        note = (
            f"Language {lang.code!r} is not English: sentiment and UX/CX were not judged; "
            "routed to the default team."
        )
    return TriagePublic(
        sentiment=SentimentPublic.build(
            label=s.label,
            score=round(s.score, 4),
            probabilities=s.probabilities,
            most_negative=asdict(s.most_negative) if s.most_negative else None,
            text=text,
        )
        if s
        else None,
        uxcx=UxCxPublic.build(
            label=u.label,
            probability=u.probability,
            probabilities=u.probabilities,
            subcategory=u.subcategory,
            subcategory_probability=u.subcategory_probability,
            problem_probability=u.problem_probability,
            evidence=[asdict(e) for e in u.evidence],
            text=text,
        )
        if u
        else None,
        team=routing.team_for(u.label if u else None, u.subcategory if u else None),
        language=LanguagePublic(
            code=lang.code, confidence=lang.confidence, supported=lang.supported
        ),
        analysers=analyzer.versions,
        note=note,
        cluster=KnownIssue(id=hit[0], title=hit[1], similarity=hit[2]) if hit else None,
    )
