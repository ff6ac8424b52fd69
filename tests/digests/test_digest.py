"""The weekly digest: sections chosen by the rules, team filtering, formats and the API."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import escape
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markdown_it import MarkdownIt
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.clusters.models import Cluster, ClusterLabel, ClusterMember
from app.core.config import Settings
from app.digests import service as digest_service
from app.digests.render import md_text, render_html, render_markdown, render_text
from app.digests.weeks import IsoWeek
from app.main import CONTENT_SECURITY_POLICY
from app.routing.table import RoutingTable
from app.tickets.models import Ticket, TicketAnalysis
from tests.helpers import API_KEY

WEEK = IsoWeek.parse("2026-W47")
WEEKS = WEEK.span(8)
# name -> (label, sub-category, messages per week, oldest first), with a sentiment each
PLAN: dict[str, tuple[str, str, list[int]]] = {
    "export crash": ("UX", "bug", [5, 6, 5, 6, 5, 6, 5, 6]),
    "parcel never arrived": ("CX", "delivery", [2, 2, 3, 2, 2, 3, 2, 16]),
    "login loop after update": ("UX", "account_access", [0, 0, 0, 0, 0, 0, 6, 9]),
    "hold music forever": ("CX", "support_responsiveness", [6, 7, 6, 7, 6, 7, 6, 0]),
    "dark mode please": ("UX", "feature_request", [1, 1, 1, 1, 1, 1, 1, 1]),
    "thanks a lot": ("none", "thanks", [2, 2, 2, 2, 2, 2, 2, 12]),
}


def _plant(engine: Engine) -> dict[str, int]:
    """Tickets, analyses, clusters and members for PLAN; returns cluster ids by name."""
    ids: dict[str, int] = {}
    n = 0
    with Session(engine) as s:
        for name, (label, sub, counts) in PLAN.items():
            first_week = next(i for i, c in enumerate(counts) if c)
            cluster = Cluster(
                title=name,
                key_phrases=name.split(),
                label=label,
                leading_label=label,
                subcategories={sub: sum(counts)},
                size=sum(counts),
                first_seen=WEEKS[first_week].start + timedelta(days=2),
                centroid=b"\x00" * 16,
            )
            s.add(cluster)
            s.flush()
            assert cluster.id is not None
            ids[name] = cluster.id
            for week, count in zip(WEEKS, counts, strict=True):
                for k in range(count):
                    n += 1
                    created = week.start + timedelta(days=2, hours=k % 20, minutes=n % 60)
                    t = Ticket(
                        source="zendesk", external_id=f"t{n}", channel="ticket",
                        subject=None, body=f"{name}: report {n} (customer {k})",
                        content_hash=f"h{n}", created_at=created, status="done",
                    )  # fmt: skip
                    s.add(t)
                    s.flush()
                    assert t.id is not None
                    negative = name not in ("dark mode please", "thanks a lot")
                    s.add(
                        TicketAnalysis(
                            ticket_id=t.id, revision=1,
                            sentiment_label="negative" if negative else "neutral",
                            sentiment_score=-0.6 if negative else 0.1,
                            uxcx_label=label, uxcx_subcategory=sub,
                            embedding=b"\x00" * 16, embedding_dim=4,
                        )
                    )  # fmt: skip
                    s.add(ClusterMember(ticket_id=t.id, cluster_id=cluster.id, similarity=0.9))
        # Praise, unclustered, in the digest week.
        for k in range(4):
            n += 1
            t = Ticket(
                source="twitter", external_id=f"p{k}", channel="social", body="love the app!",
                content_hash=f"p{k}", created_at=WEEK.start + timedelta(days=3), status="done",
            )  # fmt: skip
            s.add(t)
            s.flush()
            assert t.id is not None
            s.add(
                TicketAnalysis(
                    ticket_id=t.id, revision=1, sentiment_label="positive", sentiment_score=0.8,
                    uxcx_label="none", uxcx_subcategory="praise",
                    embedding=b"\x00" * 16, embedding_dim=4,
                )
            )  # fmt: skip
        s.commit()
    return ids


def _build(engine: Engine, settings: Settings, team: str | None = None) -> Any:
    with Session(engine) as s:
        return digest_service.build_digest(
            s, week=WEEK, team=team, routing=RoutingTable.load(settings.routing_table)
        )


def test_sections_follow_the_rules(engine: Engine, settings: Settings) -> None:
    ids = _plant(engine)
    d = _build(engine, settings)
    assert d.week == "2026-W47" and [w.week for w in d.weekly][0] == "2026-W40"
    # Headline: 6 + 16 + 9 + 0 + 1 + 12 clustered + 4 praise this week; 5 + 2 + 6 + 6 + 1 + 2
    # the week before.
    assert d.headline.messages == 48 and d.headline.previous_messages == 22
    assert d.headline.change == round(26 / 22, 4)
    assert d.headline.negative_share == round(31 / 48, 4)
    assert (d.weekly[-1].ux, d.weekly[-1].cx, d.weekly[-1].none) == (16, 16, 16)
    # The thanks cluster grew sixfold, but it is no problem: headline only, no section.
    assert ids["thanks a lot"] not in {c.id for c in [*d.top, *d.rising, *d.new, *d.quiet]}

    by_name = {c.title: c for c in d.top}
    assert [c.title for c in d.top] == [
        "parcel never arrived", "login loop after update", "export crash", "dark mode please"
    ]  # fmt: skip
    spike = by_name["parcel never arrived"]
    assert spike.count == 16 and spike.previous_mean == 2.25 and spike.growth == 7.11
    assert spike.trend == PLAN["parcel never arrived"][2] and spike.label == "CX"
    assert spike.team == "logistics" and len(spike.quotes) == 3

    assert [c.id for c in d.rising] == [ids["parcel never arrived"]]
    assert [c.id for c in d.new] == [ids["login loop after update"]]  # first seen last week
    assert d.new[0].label == "UX" and d.new[0].team == "product-engineering"
    assert [c.id for c in d.quiet] == [ids["hold music forever"]]
    # Steady volume is neither rising nor new; a trickle is neither rising nor quiet.
    for name in ("export crash", "dark mode please"):
        assert ids[name] not in {c.id for c in [*d.rising, *d.new, *d.quiet]}

    teams = {t.team: t for t in d.teams}
    assert teams["logistics"].clusters == [ids["parcel never arrived"]]
    assert teams["product-engineering"].messages == 9 + 6


def test_team_filter_and_corrections(engine: Engine, settings: Settings) -> None:
    ids = _plant(engine)
    d = _build(engine, settings, team="logistics")
    assert [c.title for c in d.top] == ["parcel never arrived"]
    assert d.headline.messages == 16 and d.rising[0].title == "parcel never arrived"
    assert d.new == [] and d.quiet == []
    # A person relabels the new issue as CX billing: it leaves product engineering.
    with Session(engine) as s:
        s.add(ClusterLabel(cluster_id=ids["login loop after update"], label="CX",
                           subcategory="billing", author="lead@example.com"))  # fmt: skip
        s.commit()
    d = _build(engine, settings)
    relabelled = next(c for c in d.new if c.id == ids["login loop after update"])
    assert relabelled.label == "CX" and relabelled.team == "billing"


def test_an_empty_week(engine: Engine, settings: Settings) -> None:
    d = _build(engine, settings)
    assert d.headline.messages == 0 and d.headline.change is None
    assert d.top == d.rising == d.new == d.quiet == [] and d.teams == []
    assert len(d.weekly) == 8 and all(w.messages == 0 for w in d.weekly)
    assert "No clustered messages this week." in render_markdown(d)
    assert "<svg" in render_html(d)


def test_formats_carry_the_same_content(engine: Engine, settings: Settings) -> None:
    _plant(engine)
    d = _build(engine, settings)
    md, html, text = render_markdown(d), render_html(d), render_text(d)
    for out in (md, html, text):
        assert "2026-W47" in out and "parcel never arrived" in out and "login loop" in out
    assert (
        "## Rising" in md and "7.1x its 4-week mean (2.25/week)" in md and "**48** messages" in md
    )
    assert "**" not in text
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 3 + len(d.top)
    assert "<script" not in html and "http" not in html.split("<body>")[1].split("xmlns")[0]
    assert json.loads(d.model_dump_json())["rising"][0]["growth"] == 7.11


def test_api_builds_stores_and_rereads(client: TestClient, engine: Engine) -> None:
    _plant(engine)
    r = client.get("/v1/digests/weekly", params={"week": "2026-W47"})
    assert r.status_code == 200 and r.json()["rising"][0]["title"] == "parcel never arrived"
    md = client.get("/v1/digests/weekly", params={"week": "2026-W47", "format": "md"})
    assert md.headers["content-type"].startswith("text/markdown") and "## New" in md.text
    html = client.get("/v1/digests/weekly", params={"week": "2026-W47", "format": "html"})
    assert html.headers["content-type"].startswith("text/html") and "<svg" in html.text
    team = client.get("/v1/digests/weekly", params={"week": "2026-W47", "team": "logistics"})
    assert [c["title"] for c in team.json()["top"]] == ["parcel never arrived"]

    created = client.post("/v1/digests", json={"week": "2026-W47"})
    assert created.status_code == 201
    stored = created.json()
    assert stored["week"] == "2026-W47" and stored["trigger"] == "api"
    # Later data does not change what was stored.
    with Session(engine) as s:
        s.add(Cluster(title="later issue", size=1, centroid=b"\x00"))
        s.commit()
    again = client.get(f"/v1/digests/{stored['id']}", params={"format": "html"})
    assert again.status_code == 200 and "later issue" not in again.text
    assert client.get(f"/v1/digests/{stored['id']}").json()["headline"]["messages"] == 48
    listed = client.get("/v1/digests").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == stored["id"]


def test_api_refuses_bad_weeks_and_teams(client: TestClient) -> None:
    bad = client.get("/v1/digests/weekly", params={"week": "2026-47"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_week"
    team = client.get("/v1/digests/weekly", params={"team": "nobody"})
    assert team.status_code == 422 and "logistics" in team.json()["message"]
    assert client.post("/v1/digests", json={"week": "2025-W53"}).status_code == 422
    assert client.get("/v1/digests/999").status_code == 404
    default = client.get("/v1/digests/weekly").json()  # the last complete week
    assert default["week"] and default["headline"]["messages"] == 0


# ---- weeks at the calendar's edges ----------------------------------------------------------


def test_weeks_at_the_calendars_edges(client: TestClient) -> None:
    # Both answered 500: the 8-week trend of 0001-W01 and the end of 9999-W52 overflow.
    for week in ("0001-W01", "9999-W52", "1969-W52", "3000-W01"):
        for r in (
            client.get("/v1/digests/weekly", params={"week": week}),
            client.get("/v1/digests/weekly", params={"week": week, "format": "html"}),
            client.post("/v1/digests", json={"week": week}),
            client.get("/v1/digests", params={"week": week}),
        ):
            assert r.status_code == 422, (week, r.text)
            assert r.json()["code"] == "invalid_week"
            assert "weeks from 1970-W01 to 2999-W52" in r.json()["message"]
    assert client.get("/v1/digests").json()["count"] == 0  # nothing was kept
    for week, start in (("1970-W01", "1969-12-29T00:00:00Z"), ("2999-W52", "2999-12-23T00:00:00Z")):
        d = client.get("/v1/digests/weekly", params={"week": week}).json()
        assert d["week"] == week and d["start"] == start and len(d["weekly"]) == 8
        assert client.post("/v1/digests", json={"week": week}).status_code == 201


def _sign_in(client: TestClient) -> None:
    """Sign in through the web form as a browser does (with its form token, when it has one)."""
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    data = {"key": API_KEY} | ({"csrf_token": token.group(1)} if token else {})
    assert client.post("/login", data=data, follow_redirects=False).status_code == 303


def test_the_web_digest_page_refuses_weeks_out_of_range(client: TestClient) -> None:
    _sign_in(client)
    for week in ("0001-W01", "9999-W52"):
        page = client.get("/", params={"week": week})
        assert page.status_code == 422 and page.headers["content-type"].startswith("text/html")
        assert "weeks from 1970-W01 to 2999-W52" in page.text
    edge = client.get("/", params={"week": "2999-W52"})
    assert edge.status_code == 200 and "Weekly issues digest: 2999-W52" in edge.text


# ---- text from customers in the Markdown -----------------------------------------------------

HOSTILE = "<script>alert(1)</script> [x](javascript:alert(1)) ![i](data:text/html,hi) **bold**"


def _hostile_digest(engine: Engine, settings: Settings) -> Any:
    ids = _plant(engine)
    with Session(engine) as s:
        cluster = s.get(Cluster, ids["parcel never arrived"])
        assert cluster is not None
        cluster.title = HOSTILE
        cluster.key_phrases = ["<img src=x onerror=alert(1)>", "vbscript:msgbox(1)"]
        s.add(cluster)
        member = s.exec(
            select(Ticket)
            .join(ClusterMember, col(ClusterMember.ticket_id) == col(Ticket.id))
            .where(col(ClusterMember.cluster_id) == cluster.id)
        ).all()
        for t in member:
            t.body = "# Heading\n\n<a href='javascript:alert(2)'>click</a> & [y](vbscript:z)"
            s.add(t)
        s.commit()
    return _build(engine, settings)


def _rendered(markdown: str) -> str:
    """The Markdown as CommonMark renders it, raw HTML allowed (the most permissive reading)."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def test_markdown_shows_customer_text_as_text(engine: Engine, settings: Settings) -> None:
    d = _hostile_digest(engine, settings)
    assert d.rising[0].title == HOSTILE and d.rising[0].quotes
    md = render_markdown(d)
    # The source itself: no tag, no link or image syntax, no scheme a linkifier would take.
    for raw in ("<script", "<img", "<a ", "](", "javascript:", "vbscript:", "data:", "**bold"):
        assert raw not in md, raw
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\[x\\]\\(javascript\\:alert" in md
    html = _rendered(md)
    for tag in ("<script", "<img", "<a ", 'href="', 'src="'):  # markdown-it's attributes
        assert tag not in html, tag
    assert html.count("<h1>") == 1  # the digest's own title; "# Heading" in a quote is text
    # ...and every renderer shows the characters the customer wrote.
    assert escape(HOSTILE, quote=False) in html
    assert escape("# Heading <a href='javascript:alert(2)'>click</a> & [y](vbscript:z)",
                  quote=False) in html  # fmt: skip
    assert "<strong>" + escape(HOSTILE, quote=False) + "</strong>" in html
    # The digest's own formatting is untouched.
    assert "<h2>Rising</h2>" in html and "<strong>48</strong> messages" in html
    assert "## Rising" in md and "7.1x its 4-week mean (2.25/week)" in md
    # The e-mail's text part is plain text: the customer's words as written, on one line.
    text = render_text(d)
    assert HOSTILE in text and "\\" not in text and "&lt;" not in text


@pytest.mark.parametrize(
    "value",
    [
        "1. not a list",
        "- nor this",
        "> nor a quote",
        "| a | table |",
        "`code` and ~~strike~~ and _it_ and __b__",
        "<https://example.com> and &amp; and &#106;avascript",
        "back\\slash \\<b> and \\[z\\]",
        "line one\nline two\n\n===",
        "@channel :smile: $x^2$",
    ],
)
def test_md_text_renders_to_exactly_the_text(value: str) -> None:
    rendered = _rendered(f"- {md_text(value)}")
    assert rendered == f"<ul>\n<li>{escape(' '.join(value.split()), quote=False)}</li>\n</ul>\n"


# ---- headers --------------------------------------------------------------------------------


def test_digests_are_served_with_nosniff_and_a_strict_policy(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    _hostile_digest(engine, settings)
    stored = client.post("/v1/digests", json={"week": "2026-W47"}).json()
    for fmt, ctype in (("html", "text/html"), ("md", "text/markdown"), ("json", "application")):
        for path in (f"/v1/digests/{stored['id']}", "/v1/digests/weekly?week=2026-W47"):
            r = client.get(path, params={"format": fmt})
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    html = client.get(f"/v1/digests/{stored['id']}", params={"format": "html"}).text
    assert "<script" not in html and "&lt;script&gt;" in html
    # The web page of a kept digest (the link in Slack and e-mail), errors and health too.
    _sign_in(client)
    page = client.get(f"/digests/{stored['id']}")
    assert page.status_code == 200 and page.text == html
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for r in (client.get("/v1/digests/999"), client.get("/healthz"), client.get("/nowhere")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # The interactive docs load Swagger UI's scripts: nosniff, but not the strict policy.
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in docs.headers
