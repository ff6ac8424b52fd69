"""The browser pages through the real app: sign-in, the digest, clusters, label corrections.

The data is the digest tests' `_plant` (tests/digests/test_digest.py); what the pages must show
is derived from its PLAN and from the services, so the plan can grow without breaking these.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.clusters.models import Cluster, ClusterLabel, ClusterMember
from app.core.config import Settings
from app.digests import service as digest_service
from app.digests.render import sparkline_svg
from app.digests.schemas import Digest
from app.digests.weeks import IsoWeek
from app.routing.table import RoutingTable
from app.tickets.models import Ticket
from tests.digests.test_digest import PLAN, WEEK, WEEKS, _plant
from tests.helpers import API_KEY, AUTH
from tests.web.signin import form_token, session_token, sign_in

NAMES = list(PLAN)
SIZES = {name: sum(counts) for name, (_, _, counts) in PLAN.items()}


def _growth(counts: list[int]) -> float | None:
    before = sum(counts[-5:-1]) / 4
    return round(counts[-1] / before, 2) if before else None


GROWTH = {name: _growth(counts) for name, (_, _, counts) in PLAN.items()}
NEGATIVE = {name: round(0.05 + 0.9 * i / len(PLAN), 3) for i, name in enumerate(PLAN)}


@pytest.fixture
def routing(settings: Settings) -> RoutingTable:
    """The routing table the app uses."""
    return RoutingTable.load(settings.routing_table)


@pytest.fixture
def web(client: TestClient) -> Iterator[TestClient]:
    """The test client, signed in through the form."""
    r = sign_in(client)
    assert r.status_code == 303
    yield client


@pytest.fixture
def csrf(web: TestClient) -> str:
    """The signed-in session's form token."""
    return session_token(web)


def _plant_all(engine: Engine) -> dict[str, int]:
    """The digest tests' data, plus the weekly counts, growth and negativity a run would set."""
    ids = _plant(engine)
    with Session(engine) as s:
        for name, cid in ids.items():
            cluster = s.get(Cluster, cid)
            assert cluster is not None
            cluster.weekly = dict(zip(map(str, WEEKS), PLAN[name][2], strict=True))
            cluster.growth, cluster.negative_share = GROWTH[name], NEGATIVE[name]
            s.add(cluster)
        s.commit()
    return ids


def _order(html: str, names: list[str]) -> list[str]:
    """The names (as links) in the order they appear in the page."""
    found = [(html.find(f">{n}</a>"), n) for n in names if f">{n}</a>" in html]
    return [n for _, n in sorted(found)]


def _sorted(ids: dict[str, int], value: dict[str, float | None]) -> list[str]:
    """Names as list_clusters sorts them: largest value first (none last), then by id."""
    return sorted(
        ids, key=lambda n: (-(v if (v := value[n]) is not None else float("-inf")), ids[n])
    )


def _digest(engine: Engine, routing: RoutingTable, week: IsoWeek, team: str | None) -> Digest:
    with Session(engine) as s:
        return digest_service.build_digest(s, week=week, team=team, routing=routing)


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.0f}%" if signed else f"{value * 100:.0f}%"


def test_pages_redirect_to_login_without_a_valid_cookie(client: TestClient) -> None:
    for path in ("/", "/clusters", "/clusters/1", "/?week=2026-W47"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in ("/clusters/1/label", "/clusters/1/label/delete"):
        r = client.post(path, data={"label": "UX", "author": "x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    # The API key itself, or anything else, is no session cookie (and the browser is told to
    # forget it).
    for value in (API_KEY, "forged", "x" * 64, "y" * 5000):
        client.cookies.set("issuelens_session", value)
        r = client.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", value
        assert 'issuelens_session=""' in r.headers["set-cookie"]
    client.cookies.clear()
    page = client.get("/")  # followed to the sign-in form
    assert page.status_code == 200 and str(page.url).endswith("/login")
    assert 'name="key"' in page.text and 'type="password"' in page.text


def test_login_checks_the_key_and_sets_a_strict_cookie(client: TestClient) -> None:
    wrong = sign_in(client, "not-the-key")
    assert wrong.status_code == 401 and "That API key is not valid." in wrong.text
    assert "issuelens_session" not in client.cookies
    assert "issuelens_session" not in wrong.headers.get("set-cookie", "")
    # The form comes back with a token that still works: the key is all that was wrong.
    token = form_token(wrong.text, "/login")
    empty = client.post("/login", data={"key": "  ", "csrf_token": token}, follow_redirects=False)
    assert empty.status_code == 401 and "Enter an API key" in empty.text

    ok = client.post("/login", data={"key": API_KEY, "csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = next(c for c in ok.headers.get_list("set-cookie") if "issuelens_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=28800" in cookie and "Secure" not in cookie  # plain http here
    session = client.cookies["issuelens_session"]
    assert len(session) >= 43 and API_KEY not in session  # random, not derived from the key
    assert client.get("/", follow_redirects=False).status_code == 200

    out = client.post("/logout", data={"csrf_token": session_token(client)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert "issuelens_session" not in client.cookies
    assert client.get("/", follow_redirects=False).status_code == 303


def test_pages_stay_out_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert all(p.startswith("/v1/") or p in ("/healthz", "/readyz") for p in paths), paths


def test_home_shows_the_latest_stored_digest(
    web: TestClient, engine: Engine, routing: RoutingTable
) -> None:
    # Nothing stored: the last complete week, built now, empty.
    empty = web.get("/")
    assert empty.status_code == 200 and "built now from current data" in empty.text
    assert "No clustered messages this week." in empty.text

    ids = _plant_all(engine)
    with Session(engine) as s:
        stored = digest_service.store_digest(
            s, week=WEEK, team=None, routing=routing, trigger="cli"
        )
    d = _digest(engine, routing, WEEK, None)
    h = d.headline
    page = web.get("/")
    assert page.status_code == 200
    html = page.text
    assert "Weekly issues digest: 2026-W47" in html
    assert f"stored digest #{stored.id} (cli)" in html
    assert f"<b>{h.messages}</b>messages ({_pct(h.change, True)} vs {h.previous_messages})" in html
    assert f"<b>{_pct(h.negative_share)}</b>negative" in html
    assert d.top and d.rising
    for c in d.top:
        assert f'<a href="/clusters/{ids[c.title]}">{c.title}</a>' in html
        assert f'aria-label="weekly trend {", ".join(map(str, c.trend))}"' in html
    rising = d.rising[0]
    assert f"{rising.growth:.1f}x its 4-week mean ({rising.previous_mean:g}/week)" in html
    assert 'value="2026-W47"' in html and "<svg" in html and "<script" not in html
    for w in d.weekly:
        assert f"<title>{w.week}: {w.messages}</title>" in html

    # The picker: another week (nothing stored: built now), and one team.
    before_week = WEEK.shift(-1)
    before = web.get("/", params={"week": str(before_week), "team": ""}).text
    assert f"Weekly issues digest: {before_week}" in before and "built now" in before
    assert f"<b>{_digest(engine, routing, before_week, None).headline.messages}</b>messages" in (
        before
    )
    team = d.top[0].team
    scoped = web.get("/", params={"week": "2026-W47", "team": team}).text
    assert f"Weekly issues digest: 2026-W47 · team {team}" in scoped and "built now" in scoped
    assert f'<option value="{team}" selected>' in scoped
    for c in d.top:
        assert (f">{c.title}</a>" in scoped) == (c.team == team), c.title

    bad = web.get("/", params={"week": "2026-47"})
    assert bad.status_code == 422 and "is not an ISO week like 2026-W47" in bad.text
    assert "Weekly issues digest" not in bad.text
    unknown = web.get("/", params={"team": "<nobody>"})
    assert unknown.status_code == 422
    assert "&#39;&lt;nobody&gt;&#39; is not in the routing" in unknown.text


def test_cluster_list_filters_and_sorts(
    web: TestClient, engine: Engine, routing: RoutingTable
) -> None:
    ids = _plant_all(engine)
    by_size = _sorted(ids, {n: float(SIZES[n]) for n in ids})
    page = web.get("/clusters")
    assert page.status_code == 200 and f"{len(PLAN)} clusters" in page.text
    assert _order(page.text, NAMES) == by_size
    assert "trend 2026-W40 to 2026-W47" in page.text
    for name, (label, sub, counts) in PLAN.items():
        row = page.text.split(f'href="/clusters/{ids[name]}"')[1].split("</tr>")[0]
        assert (
            f">{label}</span>" in row and f"<td>{routing.team_for(label, sub) or '-'}</td>" in row
        )
        assert f'"num">{SIZES[name]}</td>' in row, name
        growth = GROWTH[name]
        assert (f"{growth:.1f}x" if growth is not None else '"num">-</td>') in row, name
        assert f'aria-label="weekly trend {", ".join(map(str, counts))}"' in row, name

    for label in ("UX", "CX", "none"):
        listed = web.get("/clusters", params={"label": label}).text
        assert _order(listed, NAMES) == [n for n in by_size if PLAN[n][0] == label], label
    nothing = web.get("/clusters", params={"min_size": str(max(SIZES.values()) + 1)}).text
    assert "No clusters match" in nothing and "0 clusters" in nothing
    smallest = by_size[-1]
    with Session(engine) as s:
        cluster = s.get(Cluster, ids[smallest])
        assert cluster is not None
        cluster.label = "mixed"
        s.add(cluster)
        s.commit()
    mixed = web.get("/clusters", params={"label": "mixed"}).text
    assert _order(mixed, NAMES) == [smallest] and "1 cluster ·" in mixed
    assert '<option value="mixed" selected>' in mixed

    teams = {n: routing.team_for(PLAN[n][0], PLAN[n][1]) for n in NAMES if n != smallest}
    for team in sorted({t for t in teams.values() if t}):
        listed = web.get("/clusters", params={"team": team}).text
        assert _order(listed, NAMES) == [n for n in by_size if teams.get(n) == team], team
    threshold = SIZES[by_size[1]]
    big = web.get("/clusters", params={"min_size": str(threshold)}).text
    assert _order(big, NAMES) == [n for n in by_size if SIZES[n] >= threshold]
    growth = web.get("/clusters", params={"sort": "growth"}).text
    assert _order(growth, NAMES) == _sorted(ids, dict(GROWTH))
    negativity = web.get("/clusters", params={"sort": "negativity"}).text
    assert _order(negativity, NAMES) == _sorted(ids, dict(NEGATIVE))
    assert '<option value="negativity" selected>' in negativity

    for params, message in (
        ({"label": "bug"}, "label must be one of UX, CX, none, mixed"),
        ({"team": "nobody"}, "team &#39;nobody&#39; is not in the routing table"),
        ({"min_size": "0"}, "min size must be a whole number from 1"),
        ({"min_size": "ten"}, "min size must be a whole number from 1"),
        ({"sort": "age"}, "sort must be one of size, growth, negativity"),
    ):
        r = web.get("/clusters", params=params)
        assert r.status_code == 422 and message in r.text, params
        assert "<tbody>" not in r.text


def test_cluster_page_shows_the_cluster(
    web: TestClient, engine: Engine, routing: RoutingTable
) -> None:
    ids = _plant_all(engine)
    name = next(n for n in NAMES if SIZES[n] <= 50)
    label, sub, counts = PLAN[name]
    cid = ids[name]
    with Session(engine) as s:
        cluster = s.get(Cluster, cid)
        assert cluster is not None
        cluster.label_confidence, cluster.evidence = 0.87, ["because", "words"]
        cluster.label_probabilities = {label: 0.87, "other": 0.13}
        s.add(cluster)
        s.commit()
    page = web.get(f"/clusters/{cid}")
    assert page.status_code == 200
    html = page.text
    assert f"<h1>{name}" in html and f"<b>Key phrases:</b> {', '.join(name.split())}" in html
    assert f"{SIZES[name]} messages" in html and "From the model (no correction)." in html
    assert f"→ team <b>{routing.team_for(label, sub)}</b>" in html and "confidence 87%" in html
    assert "evidence: because, words" in html and f"{sub} ({SIZES[name]})" in html
    # The trend: one bar per week, oldest first.
    first = next(i for i, c in enumerate(counts) if c)
    for week, count in list(zip(WEEKS, counts, strict=True))[first:]:
        assert f"<title>{week}: {count}</title>" in html
    # Members: all of them (at most 50), with source, text and similarity.
    assert f"{SIZES[name]} messages, most similar" in html
    assert html.count("<td>zendesk") == SIZES[name]
    assert f"{name}: report" in html and "0.90" in html
    assert f'<option value="{label}" selected>' in html and '<option value="billing">' in html

    # More than 50 members: the 50 most similar shown, the count says how many in all.
    many = max(NAMES, key=lambda n: SIZES[n])
    extra = max(0, 51 - SIZES[many]) + 10
    with Session(engine) as s:
        for k in range(extra):
            t = Ticket(source="front", external_id=f"x{k}", channel="email", body=f"extra {k}",
                       content_hash=f"x{k}", created_at=WEEK.start, status="done")  # fmt: skip
            s.add(t)
            s.flush()
            assert t.id is not None
            s.add(ClusterMember(ticket_id=t.id, cluster_id=ids[many], similarity=0.99 - k / 1000))
        s.commit()
    html = web.get(f"/clusters/{ids[many]}").text
    assert f"The 50 most typical of {SIZES[many] + extra}" in html
    assert html.count('<td class="text">') == 50
    assert "extra 0" in html and "<td>front" in html and "0.99" in html
    for path in ("/clusters/999999", "/clusters/abc", "/clusters/0"):
        r = web.get(path)
        assert r.status_code == 404 and "No cluster with id" in r.text, path


def test_override_form_stores_and_removes_a_correction(
    web: TestClient, csrf: str, engine: Engine, routing: RoutingTable
) -> None:
    ids = _plant_all(engine)
    name = next(n for n in NAMES if PLAN[n][0] == "UX")
    cid = ids[name]
    r = web.post(
        f"/clusters/{cid}/label",
        data={"label": "CX", "subcategory": "billing", "author": "lead@example.com",
              "note": "<b>refund</b> loop", "csrf_token": csrf},
        follow_redirects=False,
    )  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == f"/clusters/{cid}?saved=1"
    api = web.get(f"/v1/clusters/{cid}").json()["label"]
    assert api["label"] == "CX" and api["subcategory"] == "billing" and api["source"] == "override"
    assert api["team"] == routing.team_for("CX", "billing") and api["author"] == "lead@example.com"
    with Session(engine) as s:
        row = s.get(ClusterLabel, cid)
        assert row is not None and row.note == "<b>refund</b> loop"

    page = web.get(r.headers["location"]).text
    assert form_token(page, f"/clusters/{cid}/label") == csrf
    assert form_token(page, f"/clusters/{cid}/label/delete") == csrf
    assert "Correction saved." in page and "by lead@example.com" in page
    assert "&lt;b&gt;refund&lt;/b&gt; loop" in page and "<b>refund</b>" not in page
    assert f"→ team <b>{routing.team_for('CX', 'billing')}</b>" in page
    assert "Remove correction" in page
    assert '<option value="CX" selected>' in page and '<option value="billing" selected>' in page
    listed = web.get("/clusters", params={"label": "CX"}).text
    assert f">{name}</a>" in listed and "corrected" in listed

    removed = web.post(
        f"/clusters/{cid}/label/delete", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert removed.status_code == 303
    assert removed.headers["location"] == f"/clusters/{cid}?removed=1"
    after = web.get(f"/v1/clusters/{cid}").json()["label"]
    assert after["source"] == "model" and after["label"] == "UX"
    with Session(engine) as s:
        assert s.exec(select(ClusterLabel)).all() == []
    page = web.get(removed.headers["location"]).text
    assert "Correction removed." in page and "Remove correction" not in page
    missing = web.post("/clusters/999999/label/delete", data={"csrf_token": csrf})
    assert missing.status_code == 404


def test_bad_form_input_shows_the_page_with_the_error(
    web: TestClient, csrf: str, engine: Engine
) -> None:
    ids = _plant_all(engine)
    name = next(n for n in NAMES if PLAN[n][0] == "UX")
    cid = ids[name]
    cases = [
        ({"label": "BUG", "author": "a@example.com"}, "label: Input should be &#39;UX&#39;"),
        ({"author": "a@example.com"}, "label: Input should be"),
        (
            {"label": "UX", "subcategory": "billing", "author": "a@example.com"},
            "subcategory &#39;billing&#39; is not one of UX&#39;s",
        ),
        ({"label": "UX", "author": "   "}, "author is empty"),
        (
            {"label": "UX", "author": "a@example.com", "note": "n" * 2001},
            "note has 2001 characters",
        ),
    ]
    for data, message in cases:
        r = web.post(f"/clusters/{cid}/label", data={**data, "csrf_token": csrf})
        assert r.status_code == 422, data
        assert "The correction was not saved" in r.text and message in r.text, data
        assert f"<h1>{name}" in r.text  # the page again, with what was typed
        if data["author"].strip():
            assert f'value="{data["author"]}"' in r.text
    with Session(engine) as s:
        assert s.exec(select(ClusterLabel)).all() == []
    missing = web.post(
        "/clusters/999999/label", data={"label": "UX", "author": "a", "csrf_token": csrf}
    )
    assert missing.status_code == 404


def test_titles_and_texts_are_escaped(web: TestClient, engine: Engine) -> None:
    with Session(engine) as s:
        s.add(Cluster(title="<script>alert(1)</script>", key_phrases=["<i>x</i>"], size=3,
                      label="UX", weekly={str(WEEK): 3}, centroid=b"\x00"))  # fmt: skip
        s.commit()
        cid = s.exec(select(Cluster.id)).one()
    for path in ("/clusters", f"/clusters/{cid}"):
        html = web.get(path).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
        assert "<i>x</i>" not in html and "&lt;i&gt;x&lt;/i&gt;" in html
    assert sparkline_svg([0, 0, 0, 0, 0, 0, 0, 3], "#3b6fd4") in web.get("/clusters").text


def test_pages_send_a_strict_content_security_policy(web: TestClient) -> None:
    r = web.get("/clusters")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert "<title>Clusters · IssueLens</title>" in r.text


def test_the_link_in_slack_and_email_opens_the_kept_digest(web: TestClient, engine: Engine) -> None:
    _plant_all(engine)
    stored = web.post("/v1/digests", json={"week": "2026-W47"}, headers=AUTH).json()
    r = web.get(f"/digests/{stored['id']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    kept = web.get(f"/v1/digests/{stored['id']}", params={"format": "html"}, headers=AUTH)
    assert r.text == kept.text and "parcel never arrived" in r.text
    assert web.get("/digests/999").status_code == 404
    assert web.get("/digests/abc").status_code == 404
    web.cookies.clear()
    assert web.get(f"/digests/{stored['id']}", follow_redirects=False).status_code == 303
