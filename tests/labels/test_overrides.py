"""PUT/DELETE /v1/tickets/{id}/label: a person's label wins everywhere and survives re-analysis."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.enrich.worker import Worker
from pipelines.requeue import requeue
from tests.helpers import count_rows

BILLING_BUG = {
    "source": "api",
    "external_id": "T-1",
    "subject": "Charged twice",
    "body": "The checkout button submitted my order twice and I was charged twice.",
}


def _ticket(client: TestClient, worker: Worker) -> int:
    r = client.post("/v1/tickets", json=BILLING_BUG)
    assert r.status_code == 202
    worker.drain()
    return int(r.json()["data"][0]["id"])


def test_override_wins_in_read_list_and_team(client: TestClient, worker: Worker) -> None:
    tid = _ticket(client, worker)
    before = client.get(f"/v1/tickets/{tid}").json()
    assert before["label"]["source"] == "model"
    assert before["label"]["label"] == before["analysis"]["uxcx"]["label"]
    r = client.put(
        f"/v1/tickets/{tid}/label",
        json={
            "label": "UX",
            "subcategory": "bug",
            "author": "lead@example.com",
            "note": "checkout",
        },
    )
    assert r.status_code == 200, r.text
    label = r.json()["label"]
    assert label["label"] == "UX" and label["subcategory"] == "bug"
    assert label["source"] == "override" and label["author"] == "lead@example.com"
    assert label["team"] == "product-engineering" and label["note"] == "checkout"
    assert label["updated_at"] is not None
    # The model's own answer is still shown beside it.
    assert r.json()["analysis"]["uxcx"] == before["analysis"]["uxcx"]
    ux = client.get("/v1/tickets", params={"label": "UX"}).json()
    assert [t["id"] for t in ux["data"]] == [tid] and ux["count"] == 1
    other = "CX" if label["label"] != "CX" else "none"
    assert client.get("/v1/tickets", params={"label": other}).json()["count"] == 0
    # A second correction replaces the first: still one row.
    r = client.put(
        f"/v1/tickets/{tid}/label",
        json={"label": "CX", "subcategory": "billing", "author": "billing@example.com"},
    )
    assert r.json()["label"]["team"] == "billing" and r.json()["label"]["note"] is None


def test_override_survives_reanalysis(client: TestClient, worker: Worker, engine: Engine) -> None:
    tid = _ticket(client, worker)
    client.put(f"/v1/tickets/{tid}/label", json={"label": "none", "author": "a"})
    assert requeue(engine, statuses=["done"]) == 1
    worker.drain()
    t = client.get(f"/v1/tickets/{tid}").json()
    assert t["status"] == "done" and t["label"]["label"] == "none"
    assert t["label"]["source"] == "override" and t["label"]["team"] is None
    # Changed text: re-analysed, the correction still stands (a person decides when to drop it).
    client.post("/v1/tickets", json={**BILLING_BUG, "body": BILLING_BUG["body"] + " Please fix."})
    worker.drain()
    assert client.get(f"/v1/tickets/{tid}").json()["label"]["label"] == "none"
    assert client.delete(f"/v1/tickets/{tid}/label").status_code == 204
    t = client.get(f"/v1/tickets/{tid}").json()
    assert t["label"]["source"] == "model" and count_rows(engine, "ticket_label") == 0


def test_bad_corrections_are_rejected(client: TestClient, worker: Worker, engine: Engine) -> None:
    tid = _ticket(client, worker)
    cases = [
        ({"label": "UX", "subcategory": "billing", "author": "a"}, 422, "unknown_subcategory"),
        ({"label": "XX", "author": "a"}, 422, "validation_error"),
        ({"label": "UX"}, 422, "validation_error"),
        ({"label": "UX", "author": "   "}, 422, "empty_text"),
        ({"label": "UX", "author": "a", "extra": 1}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        r = client.put(f"/v1/tickets/{tid}/label", json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), body
    r = client.put(
        f"/v1/tickets/{tid}/label",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    r = client.put("/v1/tickets/99999/label", json={"label": "UX", "author": "a"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert client.delete("/v1/tickets/99999/label").status_code == 404
    assert count_rows(engine, "ticket_label") == 0


def test_labels_catalog_lists_teams(client: TestClient) -> None:
    body = client.get("/v1/labels").json()
    assert body["labels"]["UX"][0] == "bug" and "travel_disruption" in body["labels"]["CX"]
    assert body["teams"]["UX"]["outage"] == "site-reliability"
    assert body["teams"]["CX"]["delivery"] == "logistics"
    assert body["teams"]["none"]["praise"] is None and body["default_team"] == "triage"
