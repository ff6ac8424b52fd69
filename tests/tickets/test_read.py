"""GET /v1/tickets/{id} and GET /v1/tickets: values, filters, pagination, bad parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from app.enrich.worker import Worker


def seed(client: TestClient, worker: Worker, sample_items: list[dict]) -> list[int]:
    r = client.post("/v1/tickets", json=sample_items)
    assert r.status_code == 202
    worker.drain()
    return [d["id"] for d in r.json()["data"]]


def test_read_one_ticket_with_analysis(
    client: TestClient, worker: Worker, sample_items: list[dict]
) -> None:
    ids = seed(client, worker, sample_items)
    t = client.get(f"/v1/tickets/{ids[0]}").json()
    src = sample_items[0]
    assert t["id"] == ids[0] and t["external_id"] == src["external_id"]
    assert t["subject"] == src["subject"] and t["body"] == src["body"]
    assert t["created_at"] == src["created_at"]
    assert t["status"] == "done" and t["language"]["code"] == "en"
    assert "author" not in t and len(t["author_hash"]) == 64
    a = t["analysis"]
    assert a["uxcx"]["label"] == "UX" and a["team"] == "product-engineering"
    assert set(a["uxcx"]["probabilities"]) == {"UX", "CX", "none"}
    assert a["sentiment"]["label"] in ("negative", "neutral", "positive")
    assert "embedding" not in a  # internal only


def test_pending_ticket_has_no_analysis_yet(client: TestClient) -> None:
    tid = client.post(
        "/v1/tickets", json={"source": "api", "external_id": "p", "body": "hello"}
    ).json()["data"][0]["id"]
    t = client.get(f"/v1/tickets/{tid}").json()
    assert t["status"] == "pending" and t["analysis"] is None and t["language"] is None


def test_missing_ticket_is_404(client: TestClient) -> None:
    r = client.get("/v1/tickets/999999")
    assert r.status_code == 404
    assert r.json() == {"code": "not_found", "message": "No ticket with id 999999."}
    r = client.get("/v1/tickets/abc")
    assert r.status_code == 422 and r.json()["code"] == "validation_error"


def test_list_filters_and_pagination(
    client: TestClient, worker: Worker, sample_items: list[dict]
) -> None:
    seed(client, worker, sample_items)
    total = len(sample_items)
    everything = client.get("/v1/tickets", params={"limit": 200}).json()
    assert everything["count"] == total and len(everything["data"]) == total

    twitter = client.get("/v1/tickets", params={"source": "twitter"}).json()
    expected = sum(i["source"] == "twitter" for i in sample_items)
    assert twitter["count"] == expected == len(twitter["data"])
    assert all(t["source"] == "twitter" for t in twitter["data"])

    social = client.get("/v1/tickets", params={"channel": "social"}).json()
    assert social["count"] > 0 and all(t["channel"] == "social" for t in social["data"])
    ticket = client.get("/v1/tickets", params={"channel": "ticket"}).json()
    assert social["count"] + ticket["count"] == total

    counts = {}
    for label in ("UX", "CX", "none"):
        page = client.get("/v1/tickets", params={"label": label, "limit": 200}).json()
        assert all(t["analysis"]["uxcx"]["label"] == label for t in page["data"])
        counts[label] = page["count"]
    non_english = sum(1 for t in everything["data"] if not t["language"]["supported"])
    assert sum(counts.values()) + non_english == total
    assert counts["UX"] > 0 and counts["CX"] > 0

    assert client.get("/v1/tickets", params={"status": "done"}).json()["count"] == total
    assert client.get("/v1/tickets", params={"status": "pending"}).json()["count"] == 0

    pages = [client.get("/v1/tickets", params={"page": p, "limit": 7}).json() for p in (1, 2, 5)]
    assert [len(p["data"]) for p in pages] == [7, 7, total - 28]
    assert all(p["count"] == total for p in pages)
    seen = [t["id"] for p in pages[:2] for t in p["data"]]
    assert len(set(seen)) == 14


def test_received_window(client: TestClient, worker: Worker, sample_items: list[dict]) -> None:
    seed(client, worker, sample_items[:5])
    now = datetime.now(UTC)
    before = (now - timedelta(hours=1)).isoformat()
    after = (now + timedelta(hours=1)).isoformat()
    assert client.get("/v1/tickets", params={"received_from": before}).json()["count"] == 5
    assert client.get("/v1/tickets", params={"received_from": after}).json()["count"] == 0
    assert client.get("/v1/tickets", params={"received_to": before}).json()["count"] == 0


def test_bad_list_parameters(client: TestClient) -> None:
    for params in (
        {"label": "ux-ish"},
        {"status": "lost"},
        {"channel": "fax"},
        {"limit": 0},
        {"limit": 201},
        {"page": 0},
        {"received_from": "yesterday"},
    ):
        r = client.get("/v1/tickets", params=params)
        assert r.status_code == 422, params
        body = r.json()
        assert body["code"] == "validation_error"
        assert body["details"][0]["field"].startswith("query.")
