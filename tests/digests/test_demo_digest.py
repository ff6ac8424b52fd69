"""The demo data end to end: import, analyse, cluster, digest; the planted issues are found."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from app.clusters.models import ClusterMember
from app.clusters.run import execute_run, request_run
from app.core.config import Settings
from app.digests.schemas import DigestCluster
from app.digests.service import build_digest
from app.digests.weeks import IsoWeek
from app.enrich.worker import Worker
from app.nlp.evidence import load_spacy
from app.routing.table import RoutingTable
from app.tickets.models import Ticket
from pipelines.import_file import run_import
from tests.fixtures.test_demo_data import load_generator

END = IsoWeek.parse("2026-W47")


def test_demo_digest_finds_the_planted_issues(
    engine: Engine, make_settings: Callable[..., Settings], worker: Worker, tmp_path: Path
) -> None:
    settings = make_settings()
    out = tmp_path / "demo"
    plan = load_generator().write(out, end_week=str(END), seed=7, scale=0.5)
    for kind in ("tickets", "posts"):
        summary = run_import(out / f"{kind}.jsonl", settings=settings, kind=kind, progress=False)
        assert summary["rejected"] == 0 and summary["imported"] == plan["files"][kind]
    assert worker.drain() == sum(plan["files"].values())
    run_id = request_run(engine, window_days=63)
    run = execute_run(engine, run_id, nlp=load_spacy(), now=END.end)
    assert run.status == "done", run.error
    assert run.counts["messages"] == sum(plan["files"].values())

    with Session(engine) as session:
        ticket_ids = {(t.source, t.external_id): t.id for t in session.exec(select(Ticket))}
        cluster_of = {m.ticket_id: m.cluster_id for m in session.exec(select(ClusterMember))}
        digest = build_digest(
            session, week=END, team=None, routing=RoutingTable.load(settings.routing_table)
        )
    members: Counter[int] = Counter(cluster_of.values())
    planted: dict[str, int] = {}
    for issue in plan["issues"]:
        ids = [ticket_ids[(source, ext)] for _, source, ext in issue["messages"]]
        clusters = Counter(cluster_of.get(i) for i in ids)
        (best, hits), *_ = clusters.most_common(1)
        # Most of the issue's messages share one cluster, and that cluster is mostly the issue.
        assert best is not None and hits >= 0.7 * len(ids), (issue["name"], clusters)
        assert hits >= 0.7 * members[best], (issue["name"], hits, members[best])
        planted[issue["name"]] = best
    assert len(set(planted.values())) == len(planted)
    assert digest.week == str(END) and [w.week for w in digest.weekly] == plan["weeks"]

    def section(clusters: list[DigestCluster]) -> dict[int, DigestCluster]:
        return {c.id: c for c in clusters}

    top, rising = section(digest.top), section(digest.rising)
    new, quiet = section(digest.new), section(digest.quiet)
    kinds = {i["name"]: i for i in plan["issues"]}
    for name, cluster_id in planted.items():
        issue = kinds[name]
        if issue["kind"] == "spike":
            assert cluster_id in rising and rising[cluster_id].label == "CX", name
            growth = rising[cluster_id].growth
            assert growth is None or growth >= 2, name
        if issue["kind"] == "new":
            assert cluster_id in new and new[cluster_id].label == "UX", name
            assert new[cluster_id].trend[:5] == [0] * 5
        if issue["kind"] == "quiet":
            assert cluster_id in quiet and quiet[cluster_id].count == 0, name
        if issue["kind"] == "steady":
            assert cluster_id in top, name
            assert cluster_id not in rising and cluster_id not in new, name
            assert top[cluster_id].label == issue["label"], name
