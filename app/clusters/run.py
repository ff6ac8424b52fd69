"""A clustering run: analysed tickets of a window in, the current clusters replaced atomically.

1. Read the analysed tickets created in the window (their stored embeddings and labels).
2. Cluster them (`pipelines.clustering.cluster_embeddings`).
3. Describe each cluster: c-TF-IDF title and key phrases, representative messages (nearest the
   centre, not near-duplicates of each other), sentiment, UX/CX label from all members'
   probabilities, channels, first/last seen, counts per ISO week.
4. Match clusters to the current ones (shared members, then centre similarity) so a continuing
   issue keeps its id; a person's merge is followed.
5. Write everything in one transaction; until it commits, readers see the previous clusters,
   and a failure leaves them untouched (the run is recorded as failed).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select

from app.clusters.algorithm import ClusterParams, cluster_embeddings, renumber
from app.clusters.models import Cluster, ClusterMember, ClusterRun, RunStatus
from app.clusters.service import clusters_changed
from app.clusters.titles import key_phrases, title_for
from app.core.db import begin_write, utcnow
from app.nlp.analyzer import compose_text
from app.nlp.base import Evidence, UxCx
from app.nlp.segment import tame_runs
from app.nlp.uxcx import label_group
from app.tickets.models import Ticket, TicketAnalysis

log = logging.getLogger("app.clusters")

# A new cluster continues an old one when at least this share of its members were the old
# one's, or, failing that, when their centres are at least this similar.
KEEP_ID_MIN_OVERLAP = 0.5
KEEP_ID_MIN_COSINE = 0.9
# A share this large from each of two old clusters makes a new cluster `merged`.
MERGED_MIN_SHARE = 0.3
TITLE_SAMPLE = 30  # members per cluster parsed for the title
# Characters of each of them parsed: a title comes from what messages open with, and the
# parse of a run stays bounded whatever a 20,000-character message holds.
TITLE_CHARS = 2_000
REPRESENTATIVES = 5


@dataclass
class Member:
    """What the run needs of one analysed ticket."""

    ticket_id: int
    created_at: datetime
    channel: str
    text: str
    sentiment_label: str | None
    sentiment_score: float | None
    uxcx: UxCx | None


def _member(ticket: Ticket, analysis: TicketAnalysis) -> Member:
    text = compose_text(ticket.subject, ticket.body)
    uxcx = None
    if analysis.uxcx_label is not None:
        uxcx = UxCx(
            label=analysis.uxcx_label,
            probability=analysis.uxcx_probability or 0.0,
            probabilities=analysis.uxcx_probabilities or {},
            subcategory=analysis.uxcx_subcategory,
            evidence=tuple(
                Evidence(text[e["start"] : e["end"]], e["start"], e["end"], e["weight"])
                for e in analysis.uxcx_evidence or []
            ),
        )
    assert ticket.id is not None
    return Member(
        ticket_id=ticket.id,
        created_at=ticket.created_at,
        channel=ticket.channel,
        text=text,
        sentiment_label=analysis.sentiment_label,
        sentiment_score=analysis.sentiment_score,
        uxcx=uxcx,
    )


def load_window(
    session: Session, *, start: datetime, end: datetime
) -> tuple[list[Member], np.ndarray]:
    """Analysed tickets created in [start, end), oldest first, with their embeddings."""
    rows = session.exec(
        select(Ticket, TicketAnalysis)
        .join(TicketAnalysis, col(TicketAnalysis.ticket_id) == col(Ticket.id))
        .where(
            col(TicketAnalysis.revision) == col(Ticket.revision),
            col(Ticket.created_at) >= start,
            col(Ticket.created_at) < end,
        )
        .order_by(col(Ticket.id))
    ).all()
    members: list[Member] = []
    vectors: list[np.ndarray] = []
    unreadable: list[int] = []
    for ticket, analysis in rows:
        # One stored analysis that cannot be read must not fail every run, leaving the
        # clusters stale for good: it is left out, and the run goes on with the rest.
        try:
            member = _member(ticket, analysis)
            vector = np.frombuffer(analysis.embedding, dtype="<f4")
        except Exception:  # noqa: BLE001 - named in the warning below
            unreadable.append(ticket.id or 0)
            continue
        members.append(member)
        vectors.append(vector)
    if vectors:
        # Embeddings of another size (another encoder) cannot be stacked with the rest.
        dim = Counter(v.shape[0] for v in vectors).most_common(1)[0][0]
        unreadable += [m.ticket_id for m, v in zip(members, vectors, strict=True) if len(v) != dim]
        kept = [(m, v) for m, v in zip(members, vectors, strict=True) if len(v) == dim]
        members, vectors = [m for m, _ in kept], [v for _, v in kept]
    if unreadable:
        log.warning(
            "cluster run left out tickets whose stored analysis cannot be read",
            extra={"stage": "cluster", "count": len(unreadable), "tickets": unreadable[:20]},
        )
    if not members:
        return members, np.zeros((0, 0), dtype=np.float32)
    return members, np.stack(vectors).astype(np.float32)


def iso_week(moment: datetime) -> str:
    """'2026-W47' for a datetime."""
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def representatives(x: np.ndarray, centroid: np.ndarray, k: int = REPRESENTATIVES) -> list[int]:
    """Rows nearest the centre, each new one far enough from those already chosen."""
    sims = x @ centroid
    order = np.argsort(-sims, kind="stable")
    chosen: list[int] = []
    for i in order:
        if chosen and float(np.max(x[chosen] @ x[i])) > 0.95:
            continue  # a near-duplicate says nothing new
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


def describe(
    members: Sequence[Member], x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, nlp: Any
) -> list[dict[str, Any]]:
    """Title, phrases, representatives and statistics of every cluster."""
    described = []
    docs_per_cluster = []
    for c in range(centroids.shape[0]):
        rows = np.where(labels == c)[0]
        nearest = rows[np.argsort(-(x[rows] @ centroids[c]), kind="stable")][:TITLE_SAMPLE]
        texts = [tame_runs(members[i].text[:TITLE_CHARS]) for i in nearest]
        docs_per_cluster.append(list(nlp.pipe(texts)))
    phrases = key_phrases(docs_per_cluster, stop_words=nlp.Defaults.stop_words)
    for c in range(centroids.shape[0]):
        rows = np.where(labels == c)[0]
        ms = [members[i] for i in rows]
        scores = [m.sentiment_score for m in ms if m.sentiment_score is not None]
        judged = [m for m in ms if m.sentiment_label is not None]
        group = label_group([m.uxcx for m in ms if m.uxcx is not None])
        weekly = Counter(iso_week(m.created_at) for m in ms)
        reps = representatives(x[rows], centroids[c])
        described.append(
            {
                "rows": rows,
                "title": title_for(phrases[c]),
                "key_phrases": phrases[c],
                "representatives": [ms[i].ticket_id for i in reps],
                "size": len(ms),
                "negative_share": round(
                    sum(m.sentiment_label == "negative" for m in judged) / len(judged), 4
                )
                if judged
                else None,
                "mean_sentiment": round(float(np.mean(scores)), 4) if scores else None,
                "label": group.label if group else None,
                "leading_label": group.leading if group else None,
                "label_confidence": group.confidence if group else None,
                "label_probabilities": group.probabilities if group else {},
                "subcategories": group.subcategories if group else {},
                "evidence": list(group.evidence) if group else [],
                "channels": dict(Counter(m.channel for m in ms).most_common()),
                "weekly": dict(sorted(weekly.items())),
                "growth": growth(weekly),
                "first_seen": min(m.created_at for m in ms),
                "last_seen": max(m.created_at for m in ms),
            }
        )
    return described


def growth(weekly: Counter[str] | dict[str, int]) -> float | None:
    """The last week's count over the mean of up to four weeks before it, minus one."""
    weeks = sorted(weekly)
    if len(weeks) < 2:
        return None
    before = [weekly[w] for w in weeks[:-1]][-4:]
    return round(weekly[weeks[-1]] / (sum(before) / len(before)) - 1.0, 4)


@dataclass
class Matching:
    """How this run's clusters relate to the current ones."""

    kept: list[int | None]  # the id each new cluster keeps (None: a new id)
    statuses: list[str]
    origins: list[int | None]  # the old cluster a `split` one came from
    continuing: set[int]
    # New cluster -> new cluster it must join: both continue clusters a person merged.
    unions: dict[int, int]


def match_ids(new_members: list[set[int]], new_centroids: np.ndarray, session: Session) -> Matching:
    """Match this run's clusters to the current ones, following a person's merges."""
    old = session.exec(select(Cluster).where(col(Cluster.active).is_(True))).all()
    merged_into: dict[int, int] = {
        int(c.id): int(c.merged_into)
        for c in session.exec(select(Cluster).where(col(Cluster.merged_into).is_not(None))).all()
        if c.id is not None and c.merged_into is not None
    }
    old_members: dict[int, set[int]] = {}
    for ticket_id, cluster_id in session.exec(
        select(ClusterMember.ticket_id, ClusterMember.cluster_id)
    ).all():
        if ticket_id is not None:
            old_members.setdefault(int(cluster_id), set()).add(int(ticket_id))

    def final(cluster_id: int) -> int:
        seen = set()
        while merged_into.get(cluster_id) and cluster_id not in seen:
            seen.add(cluster_id)
            cluster_id = merged_into[cluster_id]
        return cluster_id

    old_ids = [int(c.id) for c in old if c.id is not None]
    old_centroids = (
        np.stack([np.frombuffer(c.centroid, dtype="<f4") for c in old])
        if old
        else np.zeros((0, new_centroids.shape[1] if new_centroids.size else 0), np.float32)
    )
    candidates: list[tuple[float, float, int, int]] = []
    shares: list[dict[int, float]] = []
    # Clusters a person merged others into: what they hold stays together.
    merge_targets = {final(cid) for cid in merged_into}
    via_merge: list[set[int]] = []
    for j, members in enumerate(new_members):
        share: dict[int, float] = {}
        for cid, ms in old_members.items():
            if members:
                target = final(cid)
                share[target] = share.get(target, 0.0) + len(members & ms) / len(members)
        shares.append(dict(share))
        via_merge.append(
            {cid for cid, s in share.items() if cid in merge_targets and s >= MERGED_MIN_SHARE}
        )
        for cid, s in share.items():
            if s >= KEEP_ID_MIN_OVERLAP:
                candidates.append((s, 1.0, j, cid))
        if len(old_ids):
            sims = old_centroids @ new_centroids[j]
            for k in np.where(sims >= KEEP_ID_MIN_COSINE)[0]:
                candidates.append((0.0, float(sims[k]), j, final(old_ids[k])))
    kept: list[int | None] = [None] * len(new_members)
    taken: set[int] = set()
    for _, _, j, cid in sorted(candidates, key=lambda c: (-c[0], -c[1], c[2], c[3])):
        if kept[j] is None and cid not in taken:
            kept[j] = cid
            taken.add(cid)
    unions: dict[int, int] = {}
    for j in range(len(new_members)):
        if kept[j] is None:
            owners = [j2 for j2, cid in enumerate(kept) if cid is not None and cid in via_merge[j]]
            if owners:
                unions[j] = owners[0]
    statuses, origins = [], []
    for j in range(len(new_members)):
        big = [cid for cid, s in shares[j].items() if s >= MERGED_MIN_SHARE]
        origin = None
        if kept[j] is not None:
            status = "merged" if len(big) >= 2 else "continuing"
        elif big:
            status, origin = "split", max(big, key=lambda cid: shares[j][cid])
        else:
            status = "new"
        statuses.append(status)
        origins.append(origin)
    return Matching(kept, statuses, origins, taken, unions)


def claim_run(engine: Engine) -> int | None:
    """Take the oldest queued run (only one worker gets it); None when there is none."""
    with Session(engine) as session:
        run_id = session.exec(
            select(ClusterRun.id)
            .where(ClusterRun.status == RunStatus.queued)
            .order_by(col(ClusterRun.id))
            .limit(1)
        ).first()
        if run_id is None:
            return None
        res = session.execute(
            update(ClusterRun)
            .where(col(ClusterRun.id) == run_id, col(ClusterRun.status) == RunStatus.queued)
            .values(status=RunStatus.running, started_at=utcnow())
        )
        session.commit()
        return int(run_id) if res.rowcount == 1 else None  # type: ignore[attr-defined]


def execute_run(
    engine: Engine,
    run_id: int,
    *,
    nlp: Any,
    now: datetime | None = None,
    params: ClusterParams | None = None,
) -> ClusterRun:
    """Carry out a queued run; on failure record it and leave the current clusters as they are."""
    started = time.perf_counter()
    with Session(engine, expire_on_commit=False) as session:
        run = session.get(ClusterRun, run_id)
        if run is None:
            raise ValueError(f"no cluster run {run_id}")
        end = now or utcnow()
        run.status, run.started_at = RunStatus.running, run.started_at or utcnow()
        run.window_end, run.window_start = end, end - timedelta(days=run.window_days)
        session.add(run)
        session.commit()
    try:
        with Session(engine, expire_on_commit=False) as session:
            result = _compute_and_write(session, run_id, nlp=nlp, params=params, started=started)
        clusters_changed()
        return result
    except Exception as exc:
        log.exception("cluster run failed", extra={"stage": "cluster", "run": run_id})
        with Session(engine, expire_on_commit=False) as session:
            run = session.get(ClusterRun, run_id)
            assert run is not None
            run.status, run.error, run.finished_at = RunStatus.failed, repr(exc)[:2000], utcnow()
            session.add(run)
            session.commit()
            return run


def _compute_and_write(
    session: Session, run_id: int, *, nlp: Any, params: ClusterParams | None, started: float
) -> ClusterRun:
    run = session.get(ClusterRun, run_id)
    assert run is not None and run.window_start is not None and run.window_end is not None
    t = time.perf_counter()
    members, x = load_window(session, start=run.window_start, end=run.window_end)
    seconds = {"load": round(time.perf_counter() - t, 3)}
    session.rollback()  # end the read transaction before the long computation
    clustering = cluster_embeddings(x, params) if len(members) else None
    labels = clustering.labels if clustering else np.zeros(0, dtype=np.int64)
    centroids = clustering.centroids if clustering else np.zeros((0, 0), np.float32)
    if clustering:
        seconds.update(clustering.seconds)
    t = time.perf_counter()
    # Put back together what a person merged (a read; the ids are settled under the lock).
    unions = match_ids(_member_sets(members, labels, len(centroids)), centroids, session).unions
    if unions:
        for j, j2 in unions.items():
            labels[labels == j] = j2
        labels, centroids = renumber(labels, x)
    session.rollback()
    described = describe(members, x, labels, centroids, nlp) if len(centroids) else []
    seconds["describe"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    # From here on one write transaction: readers see the previous view until it commits.
    begin_write(session)
    matching = match_ids(_member_sets(members, labels, len(centroids)), centroids, session)
    kept, statuses, origins = matching.kept, matching.statuses, matching.origins
    continuing = matching.continuing
    now = utcnow()
    # Clusters that do not continue leave the current view (kept for their history and ids).
    session.execute(
        update(Cluster)
        .where(col(Cluster.active).is_(True), col(Cluster.id).not_in(sorted(continuing) or [-1]))
        .values(active=False, updated_at=now)
    )
    session.execute(delete(ClusterMember))
    for j, d in enumerate(described):
        cluster = session.get(Cluster, kept[j]) if kept[j] is not None else None
        if cluster is None:
            cluster = Cluster(created_at=now, centroid=b"")
        fields = {k: v for k, v in d.items() if k != "rows"}
        for key, value in fields.items():
            setattr(cluster, key, value)
        cluster.active, cluster.status, cluster.origin_id = True, statuses[j], origins[j]
        cluster.merged_into, cluster.run_id, cluster.updated_at = None, run_id, now
        cluster.centroid = np.ascontiguousarray(centroids[j], dtype="<f4").tobytes()
        session.add(cluster)
        session.flush()
        assert cluster.id is not None
        sims = x[d["rows"]] @ centroids[j]
        session.add_all(
            ClusterMember(
                ticket_id=members[i].ticket_id,
                cluster_id=cluster.id,
                similarity=round(float(s), 4),
                assigned_by="run",
            )
            for i, s in zip(d["rows"], sims, strict=True)
        )
    run = session.get(ClusterRun, run_id)
    assert run is not None
    outliers = int(np.sum(labels == -1))
    run.counts = {
        "messages": len(members),
        "clusters": len(described),
        "outliers": outliers,
        "outlier_share": round(outliers / len(members), 4) if members else 0.0,
        **{s: statuses.count(s) for s in ("new", "continuing", "merged", "split")},
    }
    run.params = clustering.summary()["params"] if clustering else {}
    seconds["write"] = round(time.perf_counter() - t, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    run.seconds = seconds
    run.status, run.finished_at = RunStatus.done, utcnow()
    session.add(run)
    session.commit()
    log.info("cluster run done", extra={"stage": "cluster", "run": run_id, **run.counts})
    return run


def _member_sets(members: Sequence[Member], labels: np.ndarray, k: int) -> list[set[int]]:
    return [{members[i].ticket_id for i in np.where(labels == c)[0]} for c in range(k)]


def request_run(engine: Engine, *, window_days: int, requested_by: str | None = None) -> int:
    """Queue a run for the worker; returns its id."""
    with Session(engine) as session:
        run = ClusterRun(window_days=window_days, requested_by=requested_by)
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id
