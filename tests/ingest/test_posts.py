"""POST /v1/posts: social posts through the real app and database."""

from __future__ import annotations

import hashlib
import hmac

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.enrich.worker import Worker
from app.tickets.models import Ticket
from tests.helpers import count_rows

POSTS = [
    {
        "platform": "app_store",
        "id": "rv-88120931",
        "title": "Crashes on launch since 6.2",
        "text": "Every time I open the app it closes after the splash screen. iPhone 13.",
        "author": "nightowl_77",
        "url": "https://apps.apple.com/gb/app/id1234567890?see-all=reviews",
        "rating": 1,
        "created_at": "2026-11-19T21:15:00Z",
    },
    {
        "platform": "Twitter",
        "id": 1859112233445566778,
        "text": "@ShopNest 3 weeks and still no refund for my returned jacket. "
        "Email me at jo@example.com",
        "author": "@jo_in_leeds",
        "url": "https://x.com/jo_in_leeds/status/1859112233445566778",
    },
    {
        "platform": "reddit",
        "id": "t3_1gx9k2p",
        "title": "Anyone else unable to sync their calendar?",
        "text": "Calendar sync has been failing for me since Monday, just spins forever.",
        "author": "u/sync_sadness",
        "url": "https://www.reddit.com/r/brightlane/comments/1gx9k2p/",
        "metadata": {"subreddit": "brightlane", "score": 41},
    },
]


def test_posts_are_stored_as_social_tickets(client: TestClient, engine: Engine) -> None:
    r = client.post("/v1/posts", json=POSTS)
    assert r.status_code == 202, r.text
    assert r.json()["created"] == 3
    assert [d["source"] for d in r.json()["data"]] == ["app_store", "twitter", "reddit"]
    with Session(engine) as s:
        rows = {t.external_id: t for t in s.exec(select(Ticket)).all()}
    review = rows["rv-88120931"]
    assert review.channel == "social" and review.subject == "Crashes on launch since 6.2"
    assert review.meta == {"url": POSTS[0]["url"], "rating": 1.0}
    assert review.author_hash == hmac.new(b"test-salt", b"nightowl_77", hashlib.sha256).hexdigest()
    tweet = rows["1859112233445566778"]
    assert tweet.body.endswith("Email me at [EMAIL]")
    assert rows["t3_1gx9k2p"].meta["subreddit"] == "brightlane"
    # The same posts again: acknowledged, nothing new.
    again = client.post("/v1/posts", json=POSTS)
    assert again.status_code == 200 and again.json()["unchanged"] == 3
    assert count_rows(engine, "ticket") == 3


def test_posts_are_analysed(client: TestClient, engine: Engine, worker: Worker) -> None:
    client.post("/v1/posts", json=POSTS[0])
    worker.drain()
    tickets = client.get("/v1/tickets").json()["data"]
    assert tickets[0]["analysis"]["uxcx"]["label"] == "UX"
    assert tickets[0]["analysis"]["sentiment"]["label"] == "negative"


def test_bad_posts_are_refused_with_the_field_named(client: TestClient, engine: Engine) -> None:
    cases = [
        ({**POSTS[0], "platform": "zendesk"}, "not a social platform"),
        ({**POSTS[0], "platform": "myspace"}, "not a social platform"),
        ({**POSTS[0], "rating": 7}, "rating"),
        ({**POSTS[0], "url": "javascript:alert(1)"}, "url"),
        ({**POSTS[0], "text": "   "}, "empty"),
        ({k: v for k, v in POSTS[0].items() if k != "id"}, "id"),
        ({**POSTS[0], "likes": 3}, "likes"),
    ]
    for payload, fragment in cases:
        r = client.post("/v1/posts", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert fragment in r.json()["message"], r.json()
    # One bad post in a batch: nothing of the batch is stored.
    r = client.post("/v1/posts", json=[POSTS[1], {**POSTS[2], "rating": -1}])
    assert r.status_code == 422 and "1.rating" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0


def test_twitter_and_email_times_are_read(client: TestClient, engine: Engine) -> None:
    posts = [
        {**POSTS[1], "id": "t1", "created_at": "Tue Oct 31 22:11:45 +0000 2017"},
        {**POSTS[1], "id": "t2", "created_at": "Tue, 31 Oct 2017 22:11:45 +0200"},
    ]
    assert client.post("/v1/posts", json=posts).status_code == 202
    with Session(engine) as s:
        times = {t.external_id: t.created_at.isoformat() for t in s.exec(select(Ticket)).all()}
    assert times == {"t1": "2017-10-31T22:11:45+00:00", "t2": "2017-10-31T20:11:45+00:00"}
    r = client.post("/v1/posts", json={**POSTS[1], "id": "t3", "created_at": "last Tuesday"})
    assert r.status_code == 422 and "created_at" in r.json()["message"]
