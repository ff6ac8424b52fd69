"""The pages in a real browser: headless Chromium (Debian's) driven by Playwright.

Each page must render without a console error or an uncaught page error (the pages run no
scripts and send a strict Content-Security-Policy, so a blocked inline resource would show up
here) and show its key text. The digest's own HTML (what e-mail and Slack links show) is opened
from a file and screenshotted: to $DIGEST_SCREENSHOT when set, else into the test's tmp dir.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import Engine
from sqlmodel import Session

from app.clusters.models import ClusterLabel
from app.core.config import Settings
from app.digests import service as digest_service
from app.digests.render import render_html
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.routing.table import RoutingTable
from tests.digests.test_digest import PLAN, WEEK, _plant
from tests.helpers import API_KEY, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def live_server(settings: Settings, analyzer: Analyzer) -> Iterator[str]:
    """The service on a free loopback port (uvicorn in a thread), on the test database."""
    with serve_in_thread(create_app(settings, analyzer=analyzer)) as url:
        yield url


@pytest.fixture
def page() -> Iterator[Page]:
    """A headless Chromium page; Debian's chromium, never a downloaded browser."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium with `apt-get install -y chromium` "
            "(`make install-test` does it); Playwright's own browser download is not used.",
            pytrace=False,
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 900})
        finally:
            browser.close()


class Console:
    """Console errors and uncaught page errors, collected while a page loads."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def check(self, where: str) -> None:
        """No error since the last check."""
        errors, self.errors = self.errors, []
        assert errors == [], f"{where}: {errors}"


def test_pages_in_chromium(
    live_server: str, page: Page, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ids = _plant(engine)
    routing = RoutingTable.load(settings.routing_table)
    with Session(engine) as s:
        stored = digest_service.store_digest(
            s, week=WEEK, team=None, routing=routing, trigger="cli"
        )
        top = digest_service.build_digest(s, week=WEEK, team=None, routing=routing).top[0]
    ux = [n for n, (label, _, _) in PLAN.items() if label == "UX"]
    cx = [n for n, (label, _, _) in PLAN.items() if label == "CX"]
    name = ux[0]  # the cluster corrected below
    console = Console(page)

    # Signed out: every page leads to the sign-in form.
    page.goto(f"{live_server}/clusters")
    expect(page).to_have_url(f"{live_server}/login")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key is not valid.")
    console.errors = [e for e in console.errors if "status of 401" not in e]  # the refusal
    console.check("/login")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server}/")

    # The digest: the latest stored one.
    expect(page.get_by_role("heading", name="Weekly issues digest: 2026-W47")).to_be_visible()
    expect(page.get_by_text(f"stored digest #{stored.id} (cli)")).to_be_visible()
    expect(page.get_by_role("link", name=top.title).first).to_be_visible()
    expect(page.get_by_role("heading", name="Rising")).to_be_visible()
    console.check("/")

    # The cluster list, filtered through its form.
    page.get_by_role("link", name="Clusters", exact=True).click()
    expect(page.get_by_role("heading", name="Recurring issues")).to_be_visible()
    expect(page.get_by_text(f"{len(PLAN)} clusters")).to_be_visible()
    page.locator("select[name=label]").select_option("UX")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{live_server}/clusters?label=UX&team=&min_size=&sort=size")
    expect(page.get_by_text(f"{len(ux)} cluster")).to_be_visible()
    expect(page.get_by_role("link", name=cx[0])).to_have_count(0)
    console.check("/clusters")

    # A cluster page, and a correction through its form.
    page.get_by_role("link", name=name, exact=True).click()
    cid = ids[name]
    expect(page).to_have_url(f"{live_server}/clusters/{cid}")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.get_by_text("From the model (no correction).")).to_be_visible()
    expect(page.get_by_role("img", name="Messages per week")).to_have_count(0)  # no run yet
    expect(page.get_by_text(f"{name}: report").first).to_be_visible()
    console.check(f"/clusters/{cid}")
    page.locator("select[name=label]").select_option("CX")
    page.locator("select[name=subcategory]").select_option("billing")
    page.get_by_label("Author").fill("lead@example.com")
    page.get_by_label("Note").fill("customers are charged twice at sign-in")
    page.get_by_role("button", name="Save correction").click()
    expect(page).to_have_url(f"{live_server}/clusters/{cid}?saved=1")
    expect(page.get_by_role("status")).to_have_text("Correction saved.")
    expect(page.get_by_text("A person's correction, by lead@example.com")).to_be_visible()
    expect(page.locator("blockquote", has_text="customers are charged twice")).to_be_visible()
    console.check("correction saved")
    with Session(engine) as s:
        row = s.get(ClusterLabel, cid)
        assert row is not None and (row.label, row.subcategory) == ("CX", "billing")

    # The digest's own HTML page, as e-mailed, from a file.
    with Session(engine) as s:
        digest = digest_service.build_digest(s, week=WEEK, team=None, routing=routing)
    html_file = tmp_path / "digest.html"
    html_file.write_text(render_html(digest), encoding="utf-8")
    page.goto(html_file.as_uri())
    expect(page.get_by_role("heading", name="Weekly issues digest: 2026-W47")).to_be_visible()
    expect(page.get_by_role("img", name="Messages per week by label")).to_be_visible()
    expect(page.get_by_text(top.title).first).to_be_visible()
    console.check("digest.html")
    shot = Path(os.environ.get("DIGEST_SCREENSHOT") or tmp_path / "digest.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
