"""Sign-out and a same-site attack in a real browser (Debian's Chromium through Playwright).

Another port of the same host is the same *site*, so the browser sends the SameSite=Strict
cookie along with a form posted from there: the Origin check is what refuses it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import Engine, delete
from sqlmodel import Session, select

from app.clusters.models import Cluster, ClusterLabel
from app.web.models import WebSession
from tests.helpers import API_KEY
from tests.web.test_browser import live_server, page  # noqa: F401  (the same fixtures)


@pytest.fixture
def other_origin() -> Iterator[tuple[str, dict[str, str]]]:
    """A page server on another port of 127.0.0.1: (its URL, {path: html}) to fill in."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            body = pages.get(self.path, "not here").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()


def _sign_in(tab: Page, url: str) -> None:
    tab.goto(f"{url}/login")
    tab.get_by_label("API key").fill(API_KEY)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab).to_have_url(f"{url}/")


def test_a_form_from_another_port_is_refused_and_sign_out_ends_the_session(
    live_server: str,  # noqa: F811
    page: Page,  # noqa: F811
    engine: Engine,
    other_origin: tuple[str, dict[str, str]],
) -> None:
    with Session(engine) as s:
        s.exec(delete(WebSession))  # the shared truncation does not know this table
        cluster = Cluster(title="checkout fails", size=3, label="UX", centroid=b"\x00")
        s.add(cluster)
        s.commit()
        cid = cluster.id
    _sign_in(page, live_server)
    page.goto(f"{live_server}/clusters/{cid}")
    csrf = page.locator("form[action$='/label'] input[name=csrf_token]").get_attribute("value")
    assert csrf

    # Even with the right token (say it leaked), a form on another origin is refused.
    attacker, pages = other_origin
    pages["/prize"] = (
        f'<form method="post" action="{live_server}/clusters/{cid}/label">'
        '<input type="hidden" name="label" value="none">'
        '<input type="hidden" name="author" value="attacker">'
        f'<input type="hidden" name="csrf_token" value="{csrf}">'
        "<button type=submit>Claim your prize</button></form>"
    )
    page.goto(f"{attacker}/prize")
    with page.expect_response(f"{live_server}/clusters/{cid}/label") as answer:
        page.get_by_role("button", name="Claim your prize").click()
    assert answer.value.status == 403
    expect(page.get_by_role("heading", name="Not done")).to_be_visible()
    expect(page.get_by_text("This form was sent from another site")).to_be_visible()
    with Session(engine) as s:
        assert s.exec(select(ClusterLabel)).all() == []

    # GET /logout only shows the button; the header's button signs out.
    page.goto(f"{live_server}/logout")
    expect(page.get_by_role("button", name="Sign out of IssueLens")).to_be_visible()
    page.goto(f"{live_server}/clusters")
    expect(page).to_have_url(f"{live_server}/clusters")
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(f"{live_server}/login")
    with Session(engine) as s:
        assert s.exec(select(WebSession)).all() == []
    page.goto(f"{live_server}/clusters")
    expect(page).to_have_url(f"{live_server}/login")
