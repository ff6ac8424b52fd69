"""Queries and changes on clusters: read, members, merge, label corrections, assignment."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
from sqlalchemy import Engine, delete, func, update
from sqlmodel import Session, col, select

from app.clusters.models import Cluster, ClusterLabel, ClusterMember, ClusterRun
from app.clusters.schemas import (
    ClusterModelLabel,
    ClusterPublic,
    MemberPublic,
    Representative,
    RunPublic,
)
from app.core.db import begin_write, utcnow
from app.core.errors import InvalidInput, NotFound
from app.labels.schemas import LabelUpdate
from app.labels.service import clear_override, set_override
from app.nlp.analyzer import compose_text
from app.routing.table import RoutingTable
from app.tickets.models import Ticket
from app.tickets.schemas import LabelPublic
from app.tickets.service import override_label

log = logging.getLogger("app.clusters")

SORTS = ("size", "growth", "negativity")


def effective_label(
    cluster: Cluster, override: ClusterLabel | None, routing: RoutingTable
) -> LabelPublic | None:
    """A correction wins; a `mixed` cluster goes to the default team."""
    if override is not None:
        return override_label(override, routing)
    if cluster.label is None:
        return None
    # The most common sub-category (JSONB does not keep key order, so never rely on it).
    subs = cluster.subcategories or {}
    sub = min(subs, key=lambda k: (-subs[k], k)) if subs else None
    if cluster.label == "mixed":
        return LabelPublic(
            label="mixed", subcategory=None, team=routing.team_for(None), source="model"
        )
    return LabelPublic(
        label=cluster.label, subcategory=sub, team=routing.team_for(cluster.label, sub),
        source="model",
    )  # fmt: skip


def _representatives(session: Session, ids: Sequence[int]) -> list[Representative]:
    if not ids:
        return []
    rows = {t.id: t for t in session.exec(select(Ticket).where(col(Ticket.id).in_(ids))).all()}
    return [
        Representative(
            ticket_id=i,
            source=rows[i].source,
            external_id=rows[i].external_id,
            text=compose_text(rows[i].subject, rows[i].body)[:500],
        )
        for i in ids
        if i in rows
    ]


def to_public(
    session: Session, cluster: Cluster, override: ClusterLabel | None, routing: RoutingTable
) -> ClusterPublic:
    """The API shape of one cluster."""
    assert cluster.id is not None
    return ClusterPublic(
        id=cluster.id,
        title=cluster.title,
        key_phrases=cluster.key_phrases,
        size=cluster.size,
        status=cluster.status,
        origin_id=cluster.origin_id,
        active=cluster.active,
        merged_into=cluster.merged_into,
        label=effective_label(cluster, override, routing),
        model_label=ClusterModelLabel(
            label=cluster.label,
            leading=cluster.leading_label,
            confidence=cluster.label_confidence,
            probabilities=cluster.label_probabilities,
            subcategories=cluster.subcategories,
            evidence=cluster.evidence,
        ),
        negative_share=cluster.negative_share,
        mean_sentiment=cluster.mean_sentiment,
        channels=cluster.channels,
        weekly=cluster.weekly,
        growth=cluster.growth,
        first_seen=cluster.first_seen,
        last_seen=cluster.last_seen,
        representatives=_representatives(session, cluster.representatives),
        run_id=cluster.run_id,
        updated_at=cluster.updated_at,
    )


def list_clusters(
    session: Session,
    *,
    routing: RoutingTable,
    label: str | None = None,
    team: str | None = None,
    min_size: int = 1,
    sort: str = "size",
    page: int = 1,
    limit: int = 50,
) -> tuple[list[ClusterPublic], int]:
    """Active clusters filtered by the label and team that count, sorted, one page."""
    rows = session.exec(
        select(Cluster, ClusterLabel)
        .join(ClusterLabel, col(ClusterLabel.cluster_id) == col(Cluster.id), isouter=True)
        .where(col(Cluster.active).is_(True), col(Cluster.size) >= min_size)
    ).all()
    picked = []
    for cluster, override in rows:
        eff = effective_label(cluster, override, routing)
        if label and (eff is None or eff.label != label):
            continue
        if team and (eff is None or eff.team != team):
            continue
        picked.append((cluster, override))

    def key(item: tuple[Cluster, ClusterLabel | None]) -> tuple[float, int]:
        c = item[0]
        value = {
            "size": float(c.size),
            "growth": c.growth if c.growth is not None else float("-inf"),
            "negativity": c.negative_share if c.negative_share is not None else -1.0,
        }[sort]
        return (-value, int(c.id or 0))

    picked.sort(key=key)
    chunk = picked[(page - 1) * limit : page * limit]
    return [to_public(session, c, o, routing) for c, o in chunk], len(picked)


def get_cluster(session: Session, *, cluster_id: int, routing: RoutingTable) -> ClusterPublic:
    """One cluster (active or not), or NotFound."""
    cluster = session.get(Cluster, cluster_id)
    if cluster is None:
        raise NotFound(f"No cluster with id {cluster_id}.")
    return to_public(session, cluster, session.get(ClusterLabel, cluster_id), routing)


def list_members(
    session: Session, *, cluster_id: int, page: int = 1, limit: int = 50
) -> tuple[list[MemberPublic], int]:
    """A cluster's tickets, most similar to its centre first."""
    if session.get(Cluster, cluster_id) is None:
        raise NotFound(f"No cluster with id {cluster_id}.")
    total = session.exec(
        select(func.count())
        .select_from(ClusterMember)
        .where(ClusterMember.cluster_id == cluster_id)
    ).one()
    rows = session.exec(
        select(ClusterMember, Ticket)
        .join(Ticket, col(Ticket.id) == col(ClusterMember.ticket_id))
        .where(ClusterMember.cluster_id == cluster_id)
        .order_by(col(ClusterMember.similarity).desc(), col(Ticket.id))
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return [
        MemberPublic(
            id=int(t.id or 0),
            source=t.source,
            external_id=t.external_id,
            channel=t.channel,
            created_at=t.created_at,
            similarity=m.similarity,
            assigned_by=m.assigned_by,
            text=compose_text(t.subject, t.body),
        )
        for m, t in rows
    ], int(total)


def merge(session: Session, *, cluster_id: int, into: int) -> None:
    """Move every member of `cluster_id` into `into`; later runs keep them together."""
    if cluster_id == into:
        raise InvalidInput("A cluster cannot be merged into itself.", code="same_cluster")
    begin_write(session)
    try:
        source, target = session.get(Cluster, cluster_id), session.get(Cluster, into)
        if source is None or target is None:
            raise NotFound(f"No cluster with id {cluster_id if source is None else into}.")
        if not source.active or not target.active:
            raise InvalidInput(
                "Only current clusters can be merged; this one is no longer active.",
                code="inactive_cluster",
            )
        a = np.frombuffer(source.centroid, dtype="<f4")
        b = np.frombuffer(target.centroid, dtype="<f4")
        mean = a * source.size + b * target.size
        centroid = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype("<f4")
        session.execute(
            update(ClusterMember)
            .where(col(ClusterMember.cluster_id) == cluster_id)
            .values(cluster_id=into, assigned_by="merge")
        )
        now = utcnow()
        target.size += source.size
        target.centroid = centroid.tobytes()
        target.updated_at = now
        for week, n in source.weekly.items():
            target.weekly = {**target.weekly, week: target.weekly.get(week, 0) + n}
        source.active, source.merged_into, source.size, source.updated_at = False, into, 0, now
        session.add_all([source, target])
        session.commit()
        clusters_changed()
    except Exception:
        session.rollback()
        raise


def set_label(session: Session, *, cluster_id: int, update_: LabelUpdate) -> None:
    """Create or replace a person's label for a cluster."""
    set_override(
        session, parent=Cluster, override=ClusterLabel, key="cluster_id", key_value=cluster_id,
        what="cluster", update=update_,
    )  # fmt: skip


def clear_label(session: Session, *, cluster_id: int) -> None:
    """Remove a cluster's correction."""
    clear_override(
        session, parent=Cluster, override=ClusterLabel, key_value=cluster_id, what="cluster"
    )


def run_public(run: ClusterRun) -> RunPublic:
    """The API shape of a run."""
    assert run.id is not None
    return RunPublic(
        id=run.id,
        status=run.status,
        window_days=run.window_days,
        window_start=run.window_start,
        window_end=run.window_end,
        params=run.params,
        counts=run.counts,
        seconds=run.seconds,
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


class ClusterIndex:
    """Centres of the current clusters, for assigning a new ticket or answering triage."""

    def __init__(self, ids: list[int], titles: list[str], centroids: np.ndarray) -> None:
        self.ids, self.titles, self.centroids = ids, titles, centroids

    @classmethod
    def load(cls, session: Session) -> ClusterIndex:
        """The active clusters' centres (those of the current encoder's width: see `nearest`)."""
        rows = session.exec(select(Cluster).where(col(Cluster.active).is_(True))).all()
        vectors = [np.frombuffer(c.centroid, dtype="<f4") for c in rows]
        if not rows:
            return cls([], [], np.zeros((0, 0), np.float32))
        # Clusters made with another encoder (another width) cannot be compared: keep the width
        # most clusters have; `nearest` also checks it against the texts' embeddings.
        widths = [len(v) for v in vectors]
        width = max(set(widths), key=lambda w: (widths.count(w), w))
        keep = [i for i, w in enumerate(widths) if w == width]
        if len(keep) < len(rows):
            log.warning(
                "clusters of another embedding width ignored; run clustering again",
                extra={"stage": "cluster", "ignored": len(rows) - len(keep), "width": width},
            )
        return cls(
            [int(rows[i].id or 0) for i in keep],
            [rows[i].title for i in keep],
            np.stack([vectors[i] for i in keep]),
        )

    def nearest(
        self, embeddings: np.ndarray, min_cosine: float
    ) -> list[tuple[int, str, float] | None]:
        """(cluster id, title, cosine) of the nearest centre per row, when close enough."""
        if not self.ids or embeddings.size == 0:
            return [None] * len(embeddings)
        if embeddings.shape[1] != self.centroids.shape[1]:
            log.warning(
                "clusters were made with another encoder; run clustering again",
                extra={
                    "stage": "cluster",
                    "cluster_width": int(self.centroids.shape[1]),
                    "embedding_width": int(embeddings.shape[1]),
                },
            )
            return [None] * len(embeddings)
        sims = embeddings @ self.centroids.T
        best = sims.argmax(axis=1)
        out: list[tuple[int, str, float] | None] = []
        for row, k in enumerate(best):
            s = float(sims[row, k])
            out.append((self.ids[k], self.titles[k], round(s, 4)) if s >= min_cosine else None)
        return out


# Bumped whenever this process changes the current clusters (a run, a merge).
_generation = 0


def clusters_changed() -> None:
    """Tell every `ClusterIndexCache` of this process to read the clusters again."""
    global _generation
    _generation += 1


class ClusterIndexCache:
    """The current clusters' centres for triage, read from the database at most once every
    `ttl_s` seconds, and again at once after this process changed them (`clusters_changed`).

    Reading them took about 0.8 ms of a triage request's 5 to 9 (profiled); a clustering run
    in another process (a standalone worker) shows in triage within `ttl_s`."""

    def __init__(self, engine: Engine, ttl_s: float = 2.0) -> None:
        self.engine, self.ttl_s = engine, ttl_s
        self._lock = threading.Lock()
        self._entry: tuple[float, int, ClusterIndex] | None = None

    def get(self) -> ClusterIndex:
        """The cached index, or a fresh one when it is too old or the clusters changed."""
        entry, now = self._entry, time.monotonic()
        if entry and entry[1] == _generation and now - entry[0] < self.ttl_s:
            return entry[2]
        with self._lock:
            generation = _generation  # read before loading: a change meanwhile reloads
            with Session(self.engine) as session:
                index = ClusterIndex.load(session)
            self._entry = (now, generation, index)
        return index


def assign_tickets(
    session: Session, items: Sequence[tuple[int, np.ndarray]], *, min_cosine: float
) -> int:
    """Put newly analysed tickets into the nearest current cluster when close enough (in the
    caller's transaction); returns how many joined one."""
    index = ClusterIndex.load(session)
    if not items or not index.ids:
        return 0
    ids = [i for i, _ in items]
    nearest = index.nearest(np.stack([e for _, e in items]), min_cosine)
    previous = dict(
        session.exec(
            select(ClusterMember.ticket_id, ClusterMember.cluster_id).where(
                col(ClusterMember.ticket_id).in_(ids)
            )
        ).all()
    )
    session.execute(
        delete(ClusterMember)
        .where(col(ClusterMember.ticket_id).in_(ids))
        .execution_options(synchronize_session=False)
    )
    joined = [
        ClusterMember(ticket_id=i, cluster_id=hit[0], similarity=hit[2], assigned_by="worker")
        for i, hit in zip(ids, nearest, strict=True)
        if hit is not None
    ]
    session.add_all(joined)
    session.flush()
    touched = {m.cluster_id for m in joined} | {int(c) for c in previous.values()}
    for cluster_id in touched:
        size = session.exec(
            select(func.count())
            .select_from(ClusterMember)
            .where(ClusterMember.cluster_id == cluster_id)
        ).one()
        session.execute(update(Cluster).where(col(Cluster.id) == cluster_id).values(size=int(size)))
    return len(joined)
