"""How a run's clusters inherit ids: continuing, new, split and merged."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.clusters.models import Cluster, ClusterMember
from app.clusters.run import match_ids
from app.tickets.models import Ticket


def _unit(v: list[float]) -> np.ndarray:
    a = np.array(v + [0.0] * (8 - len(v)), dtype=np.float32)
    return a / np.linalg.norm(a)


@pytest.fixture
def current(engine: Engine) -> None:
    """Clusters 1 (tickets 1-10) and 2 (tickets 11-20) are current."""
    with Session(engine) as s:
        for i in range(1, 31):
            s.add(
                Ticket(
                    id=i, source="api", external_id=str(i), channel="ticket", body="x",
                    content_hash="h", created_at=datetime.now(UTC),
                )
            )  # fmt: skip
        s.add(Cluster(id=1, centroid=_unit([1, 0]).tobytes(), size=10))
        s.add(Cluster(id=2, centroid=_unit([0, 1]).tobytes(), size=10))
        s.flush()
        s.add_all(ClusterMember(ticket_id=i, cluster_id=1, similarity=0.9) for i in range(1, 11))
        s.add_all(ClusterMember(ticket_id=i, cluster_id=2, similarity=0.9) for i in range(11, 21))
        s.commit()


def test_continuing_new_split_and_merged(engine: Engine, current: None) -> None:
    new = [
        set(range(1, 8)),  # most of 1: keeps id 1
        set(range(8, 11)) | {21, 22, 23, 24},  # 3 of 1's members, 4 new: split from 1
        set(range(25, 31)),  # nothing known: new
    ]
    centroids = np.stack([_unit([1, 0.1]), _unit([0.3, 0, 1]), _unit([0, 0, 0, 1])])
    with Session(engine) as s:
        m = match_ids(new, centroids, s)
    assert m.kept == [1, None, None]
    assert m.statuses == ["continuing", "split", "new"] and m.origins == [None, 1, None]
    assert m.continuing == {1} and m.unions == {}


def test_merged_and_centre_match(engine: Engine, current: None) -> None:
    new = [set(range(4, 11)) | set(range(11, 18)), set(range(25, 31))]
    # The second has no shared members but the same centre as cluster 2: it keeps 2's id.
    centroids = np.stack([_unit([1, 1]), _unit([0, 1])])
    with Session(engine) as s:
        m = match_ids(new, centroids, s)
    assert m.kept == [1, 2] and m.statuses == ["merged", "continuing"]


def test_person_merge_is_put_back_together(engine: Engine, current: None) -> None:
    with Session(engine) as s:
        one = s.get(Cluster, 1)
        assert one is not None
        one.active, one.merged_into = False, 2
        s.add(one)
        for member in s.exec(select(ClusterMember).where(ClusterMember.cluster_id == 1)).all():
            member.cluster_id = 2
            s.add(member)
        s.commit()
        m = match_ids(
            [set(range(1, 11)), set(range(11, 21))], np.stack([_unit([1, 0]), _unit([0, 1])]), s
        )
    assert 2 in m.kept and m.unions in ({1: 0}, {0: 1})
