"""Clustering runs through the real stack: worker, API, stable ids, merges, corrections."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from app.clusters.models import Cluster
from app.enrich.worker import Worker
from app.nlp.evidence import load_spacy
from tests.helpers import count_rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "uxcx"
NOW = datetime.now(UTC)


def _items(industry: str, weeks_ago: tuple[int, ...]) -> list[dict[str, Any]]:
    """The industry's written examples as tickets, spread over the given weeks."""
    rows = [json.loads(line) for line in (FIXTURES / f"{industry}.jsonl").open()]
    return [
        {
            "source": "api",
            "external_id": r["id"],
            "subject": r["subject"],
            "body": r["text"],
            "channel": "ticket" if r["channel"] == "ticket" else "social",
            "created_at": (NOW - timedelta(days=7 * weeks_ago[i % len(weeks_ago)] + 1)).isoformat(),
        }
        for i, r in enumerate(rows)
    ]


def _run(client: TestClient, worker: Worker) -> dict[str, Any]:
    r = client.post("/v1/clusters/runs", json={"window_days": 60})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert worker.run_cluster_runs() == 1
    run = client.get(f"/v1/clusters/runs/{r.json()['id']}").json()
    assert run["status"] == "done", run
    return run


def _clusters(client: TestClient) -> list[dict[str, Any]]:
    body = client.get("/v1/clusters", params={"limit": 200}).json()
    assert body["count"] == len(body["data"])
    return body["data"]


def _members(client: TestClient, cluster_id: int) -> set[int]:
    body = client.get(f"/v1/clusters/{cluster_id}/members", params={"limit": 200}).json()
    return {m["id"] for m in body["data"]}


def test_cluster_lifecycle(client: TestClient, worker: Worker, engine: Engine) -> None:
    items = _items("food_delivery", (1, 2, 3)) + _items("airline", (1, 2, 3))
    assert client.post("/v1/tickets", json=items).status_code == 202
    worker.drain()
    run = _run(client, worker)
    counts = run["counts"]
    assert counts["messages"] == 400 and counts["new"] == counts["clusters"] >= 5
    assert counts["outlier_share"] < 0.3 and run["params"]["min_cluster_size"] >= 5
    clusters = _clusters(client)
    assert len(clusters) == counts["clusters"]
    assert sum(c["size"] for c in clusters) + counts["outliers"] == 400
    assert [c["size"] for c in clusters] == sorted((c["size"] for c in clusters), reverse=True)
    stop_words = load_spacy(tokenizer_only=True).Defaults.stop_words
    for c in clusters:
        words = c["title"].replace(",", " ").split()
        assert words and not [w for w in words if w in stop_words], c["title"]
        assert 3 <= len(c["representatives"]) <= 5 or len(c["representatives"]) == c["size"]
        members = _members(client, c["id"])
        assert len(members) == c["size"]
        assert {r["ticket_id"] for r in c["representatives"]} <= members
        assert sum(c["weekly"].values()) == c["size"] and len(c["weekly"]) <= 3
        assert c["label"]["label"] in ("UX", "CX", "none", "mixed")
        assert c["model_label"]["confidence"] is not None
        assert abs(sum(c["model_label"]["probabilities"].values()) - 1) < 0.01
        assert c["status"] == "new" and c["first_seen"] <= c["last_seen"]
    # Unclustered messages stay visible; members name their cluster.
    outliers = client.get("/v1/tickets", params={"clustered": "false", "limit": 200}).json()
    assert outliers["count"] == counts["outliers"]
    assert all(t["cluster"] is None for t in outliers["data"])
    first = clusters[0]
    rep = client.get(f"/v1/tickets/{first['representatives'][0]['ticket_id']}").json()
    assert rep["cluster"]["id"] == first["id"] and rep["cluster"]["title"] == first["title"]
    assert rep["cluster"]["assigned_by"] == "run" and rep["cluster"]["similarity"] > 0.4
    inside = client.get("/v1/tickets", params={"clustered": "true", "limit": 1}).json()
    assert inside["count"] == 400 - counts["outliers"]
    # Filters and sorts.
    cx = client.get("/v1/clusters", params={"label": "CX", "limit": 200}).json()["data"]
    assert cx and all(c["label"]["label"] == "CX" for c in cx)
    logistics = client.get("/v1/clusters", params={"team": "logistics"}).json()["data"]
    assert all(c["label"]["team"] == "logistics" for c in logistics)
    neg = client.get("/v1/clusters", params={"sort": "negativity", "limit": 200}).json()["data"]
    shares = [c["negative_share"] for c in neg]
    assert shares == sorted(shares, reverse=True)
    big = client.get("/v1/clusters", params={"min_size": clusters[0]["size"]}).json()
    assert big["count"] >= 1 and all(c["size"] >= clusters[0]["size"] for c in big["data"])

    # The same data again: the same clusters keep the same ids.
    before = {c["id"]: _members(client, c["id"]) for c in clusters}
    again = _run(client, worker)
    assert again["counts"]["continuing"] == counts["clusters"]
    assert {c["id"]: _members(client, c["id"]) for c in _clusters(client)} == before

    # A correction of a cluster's label wins and is kept by the next run.
    target = clusters[0]["id"]
    r = client.put(
        f"/v1/clusters/{target}/label",
        json={"label": "UX", "subcategory": "bug", "author": "pm@example.com"},
    )
    assert r.status_code == 200 and r.json()["label"]["source"] == "override"
    assert r.json()["label"]["team"] == "product-engineering"
    _run(client, worker)
    assert client.get(f"/v1/clusters/{target}").json()["label"]["label"] == "UX"
    assert client.delete(f"/v1/clusters/{target}/label").status_code == 204
    assert client.get(f"/v1/clusters/{target}").json()["label"]["source"] == "model"

    # A person's merge holds, and the next run keeps the two together under the kept id.
    a, b = clusters[1], clusters[2]
    merged = client.post(f"/v1/clusters/{a['id']}/merge", json={"into": b["id"], "author": "x"})
    assert merged.status_code == 200 and merged.json()["size"] == a["size"] + b["size"]
    gone = client.get(f"/v1/clusters/{a['id']}").json()
    assert gone["active"] is False and gone["merged_into"] == b["id"]
    together = before[a["id"]] | before[b["id"]]
    assert _members(client, b["id"]) == together
    _run(client, worker)
    after = {c["id"]: _members(client, c["id"]) for c in _clusters(client)}
    assert a["id"] not in after and len(after[b["id"]] & together) >= 0.8 * len(together)
    bad = client.post(f"/v1/clusters/{b['id']}/merge", json={"into": b["id"], "author": "x"})
    assert bad.status_code == 422 and bad.json()["code"] == "same_cluster"
    bad = client.post(f"/v1/clusters/{a['id']}/merge", json={"into": b["id"], "author": "x"})
    assert bad.status_code == 422 and bad.json()["code"] == "inactive_cluster"

    # A ticket analysed after the run joins the cluster its near-twin is in; triage names it.
    big_one = _clusters(client)[0]
    twin = big_one["representatives"][0]
    text = client.get(f"/v1/tickets/{twin['ticket_id']}").json()["body"]
    new = client.post(
        "/v1/tickets", json={"source": "api", "external_id": "late-1", "body": text + " Again!"}
    ).json()["data"][0]["id"]
    worker.drain()
    assert new in _members(client, big_one["id"])
    triaged = client.post("/v1/triage", json={"text": text}).json()
    assert triaged["cluster"]["id"] == big_one["id"] and triaged["cluster"]["similarity"] >= 0.5
    assert triaged["cluster"]["title"] == big_one["title"]


def test_a_new_week_keeps_continuing_ids(client: TestClient, worker: Worker) -> None:
    client.post("/v1/tickets", json=_items("food_delivery", (2, 3)))
    worker.drain()
    _run(client, worker)
    first = {c["id"]: c["title"] for c in _clusters(client)}
    client.post("/v1/tickets", json=_items("airline", (1,)))
    worker.drain()
    run = _run(client, worker)
    now = {c["id"] for c in _clusters(client)}
    kept = set(first) & now
    assert len(kept) >= 0.7 * len(first), (first, run["counts"])
    assert run["counts"]["new"] >= 1  # the airline week brings issues of its own


def test_failed_run_leaves_the_previous_view(
    client: TestClient, worker: Worker, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/v1/tickets", json=_items("banking", (1, 2)))
    worker.drain()
    _run(client, worker)
    before = {c["id"]: (c["size"], c["title"]) for c in _clusters(client)}
    members = count_rows(engine, "cluster_member")

    def boom(self: Session, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    # Fails after the old members were deleted inside the run's transaction.
    monkeypatch.setattr(Session, "add_all", boom)
    r = client.post("/v1/clusters/runs", json={})
    assert worker.run_cluster_runs() == 1
    monkeypatch.undo()
    run = client.get(f"/v1/clusters/runs/{r.json()['id']}").json()
    assert run["status"] == "failed" and "disk full" in run["error"]
    assert run["window_days"] == 28
    assert {c["id"]: (c["size"], c["title"]) for c in _clusters(client)} == before
    assert count_rows(engine, "cluster_member") == members


def test_cluster_errors(client: TestClient) -> None:
    assert client.get("/v1/clusters/5").status_code == 404
    assert client.get("/v1/clusters/5/members").status_code == 404
    assert client.get("/v1/clusters/runs/9").status_code == 404
    assert client.post("/v1/clusters/runs", json={"window_days": 0}).status_code == 422
    assert client.get("/v1/clusters", params={"sort": "loudest"}).status_code == 422
    r = client.put("/v1/clusters/5/label", json={"label": "UX", "author": "a"})
    assert r.status_code == 404
    assert client.get("/v1/clusters").json() == {"data": [], "count": 0}


def test_pipelines_cluster_job(
    client: TestClient,
    worker: Worker,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.core.config import get_settings
    from pipelines.__main__ import main

    client.post("/v1/tickets", json=_items("telecom", (1,)))
    worker.drain()
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        assert main(["cluster", "--window-days", "30"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "cluster run 1: done" in out and '"messages": 200' in out
    assert client.get("/v1/clusters/runs/1").json()["window_days"] == 30
    assert len(_clusters(client)) >= 3


def test_clusters_of_another_encoder_are_ignored_not_a_500(
    client: TestClient, engine: Engine
) -> None:
    """Found by the API fuzzer: clusters whose centres have another width (made by another
    encoder, before EMBEDDER_PATH changed) made triage fail with a matmul error."""
    with Session(engine) as s:
        s.add(Cluster(title="old encoder", size=3, centroid=np.ones(4, "<f4").tobytes()))
        s.commit()
    r = client.post("/v1/triage", json={"text": "The app crashes when I log in"})
    assert r.status_code == 200 and r.json()["cluster"] is None
    assert r.json()["uxcx"]["label"] == "UX"


def test_triage_cluster_cache_rereads_after_a_change_here_or_its_ttl(engine: Engine) -> None:
    """Triage reads the clusters from a per-process cache: a change made by this process
    shows at once, one made elsewhere (written straight to the database) after `ttl_s`."""
    from app.clusters.service import ClusterIndexCache, clusters_changed

    cached = ClusterIndexCache(engine, ttl_s=3600)
    fresh = ClusterIndexCache(engine, ttl_s=0)
    assert cached.get().ids == [] and fresh.get().ids == []
    with Session(engine) as s:
        s.add(Cluster(title="login fails", size=3, centroid=np.ones(384, "<f4").tobytes()))
        s.commit()
    assert cached.get().ids == []  # another process's change: not seen until the TTL ends
    assert fresh.get().titles == ["login fails"]
    clusters_changed()  # what a run or a merge in this process calls
    assert cached.get().titles == ["login fails"]
