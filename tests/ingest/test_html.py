"""HTML bodies of helpdesk messages to text: linear in the input, whatever the markup."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.ingest.providers.base import html_to_text
from tests.ingest.test_webhooks import hook_client, load, sign, tickets  # noqa: F401


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Hi &amp; bye</p><p>Second<br>line</p>", "Hi & bye\nSecond\nline"),
        ("<div><script>alert(1)</script><style>p{}</style>Hello</div>", "Hello"),
        ("<ul><li>one</li><li>two</li></ul>", "one\ntwo"),
        ("a < b and c > d, R&D", "a < b and c > d, R&D"),
        ("<p>unclosed <b>bold", "unclosed bold"),
        ("caf&eacute; &#128512; x&nbsp;y", "café 😀 x y"),
        ("<!-- note --><p>kept</p>", "kept"),
        ("control\x01 chars <b>dropped</b>", "control chars dropped"),
        ("plain text, no markup", "plain text, no markup"),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_markup_that_made_the_old_parser_quadratic() -> None:
    # "<a " repeated: the standard library's HTMLParser took 76 s on 80 KB of it.
    flood = "<a " * 30_000
    assert html_to_text(flood).startswith("<a <a")
    assert html_to_text("<p>Help</p>" + "</" * 40_000) == "Help"
    # Nesting deeper than the parser's limit still gives the words.
    assert html_to_text("<div>" * 3_000 + "deep text") == "deep text"


def test_hostile_markup_in_a_signed_delivery_is_stored(
    hook_client: TestClient,  # noqa: F811
    engine: Engine,
) -> None:
    payload = json.loads(load("intercom", "conversation_user_created.json"))
    source = payload["data"]["item"]["source"]
    source["body"] = "<p>The export crashes</p>" + "<a " * 20_000
    body = json.dumps(payload).encode()
    r = hook_client.post("/v1/webhooks/intercom", content=body, headers=sign("intercom", body))
    assert r.status_code == 202, r.text
    stored = tickets(engine)["intercom:215468831457902"]
    # What follows the paragraph is one unclosed tag with 20,000 attributes, as a browser reads it.
    assert stored.body == "The export crashes"
