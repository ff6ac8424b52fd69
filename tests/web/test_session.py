"""Web sign-in hardening through the real app: server-side sessions that expire and end at
sign-out, the CSRF token and same-origin check on every form POST, form content types only,
and sign-in failures counted with wrong Bearer keys.
"""

from __future__ import annotations

import hashlib
import html
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete
from sqlmodel import Session, select

from app.clusters.models import Cluster, ClusterLabel
from app.core.config import Settings
from app.core.db import utcnow
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.web.models import WebSession
from app.web.security import login_signature
from tests.helpers import API_KEY, AUTH
from tests.web.signin import form_token, session_token, sign_in

COOKIE = "issuelens_session"
BAD = {"Authorization": "Bearer not-the-key"}


@pytest.fixture(autouse=True)
def _no_sessions(engine: Engine) -> None:
    """web_session starts empty (the shared truncation does not know the table)."""
    with Session(engine) as s:
        s.exec(delete(WebSession))
        s.commit()


@pytest.fixture
def web(client: TestClient) -> TestClient:
    """The test client, signed in through the form."""
    assert sign_in(client).status_code == 303
    return client


def _rows(engine: Engine) -> list[WebSession]:
    with Session(engine) as s:
        return list(s.exec(select(WebSession)).all())


def _labels(engine: Engine) -> list[tuple[int, str]]:
    with Session(engine) as s:
        return [(r.cluster_id, r.label) for r in s.exec(select(ClusterLabel)).all()]


def _cluster(engine: Engine) -> int:
    with Session(engine) as s:
        cluster = Cluster(title="checkout fails", size=3, label="UX", centroid=b"\x00")
        s.add(cluster)
        s.commit()
        assert cluster.id is not None
        return cluster.id


def _set_cookie(response_headers: object, name: str) -> str:
    cookies = response_headers.get_list("set-cookie")  # type: ignore[attr-defined]
    return next(c for c in cookies if c.startswith(f"{name}="))


def _multipart(fields: dict[str, str], file: bool = False) -> tuple[bytes, str]:
    boundary = "----issuelens-test"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    if file:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; '
            f'filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
        )
    body = "".join(parts) + f"--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


def test_sign_in_opens_a_server_side_session_with_a_max_age(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    app = create_app(make_settings(web_session_ttl_s=600), analyzer=analyzer)
    with TestClient(app) as c:
        before = utcnow()
        r = sign_in(c)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = _set_cookie(r.headers, COOKIE)
        assert "Max-Age=600" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
        assert "SameSite=strict" in cookie and "Secure" not in cookie
        # The sign-in form's own cookie is dropped once used.
        assert 'issuelens_login=""' in _set_cookie(r.headers, "issuelens_login")
        token = c.cookies[COOKIE]
        (row,) = _rows(engine)
        # Only the token's hash is stored; the key only as a keyed fingerprint.
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        stored = f"{row.token_hash} {row.key_fingerprint} {row.csrf_token}"
        assert token not in stored and API_KEY not in stored
        assert row.key_fingerprint != hashlib.sha256(API_KEY.encode()).hexdigest()
        assert row.expires_at - row.created_at == timedelta(seconds=600)
        assert before - timedelta(seconds=1) <= row.created_at <= utcnow()
        assert session_token(c) == row.csrf_token and len(row.csrf_token) >= 43
        assert c.get("/clusters", follow_redirects=False).status_code == 200

    # Over https the cookies are Secure.
    with TestClient(app, base_url="https://testserver") as tls:
        page = tls.get("/login")
        assert "Secure" in _set_cookie(page.headers, "issuelens_login")
        r = sign_in(tls)
        assert r.status_code == 303 and "Secure" in _set_cookie(r.headers, COOKIE)


def test_an_expired_session_leads_to_login_and_is_deleted_at_the_next_sign_in(
    web: TestClient, engine: Engine
) -> None:
    cid = _cluster(engine)
    csrf = session_token(web)
    old = web.cookies[COOKIE]
    with Session(engine) as s:
        row = s.exec(select(WebSession)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    r = web.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert f'{COOKIE}=""' in r.headers["set-cookie"]  # the browser is told to forget it
    web.cookies.set(COOKIE, old)
    refused = web.post(
        f"/clusters/{cid}/label",
        data={"label": "CX", "author": "a@example.com", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert refused.status_code == 303 and refused.headers["location"] == "/login"
    assert _labels(engine) == []
    assert len(_rows(engine)) == 1  # still there: deleted lazily...
    assert sign_in(web).status_code == 303
    (row,) = _rows(engine)  # ...at the next sign-in, which replaced it
    assert row.token_hash != hashlib.sha256(old.encode()).hexdigest()
    assert row.expires_at > utcnow() + timedelta(hours=7)


def test_signing_in_again_ends_the_previous_session(web: TestClient, engine: Engine) -> None:
    first = web.cookies[COOKIE]
    assert sign_in(web).status_code == 303
    (row,) = _rows(engine)
    assert web.cookies[COOKIE] != first
    assert row.token_hash == hashlib.sha256(web.cookies[COOKIE].encode()).hexdigest()


def test_sessions_end_when_their_key_leaves_api_keys(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    both = create_app(make_settings(api_keys="key-one,key-two"), analyzer=analyzer)
    with TestClient(both) as c:
        assert sign_in(c, "key-one").status_code == 303
        token = c.cookies[COOKIE]
    rotated = create_app(make_settings(api_keys="key-two"), analyzer=analyzer)
    with TestClient(rotated) as c:
        c.cookies.set(COOKIE, token)
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
    kept = create_app(make_settings(api_keys="key-one"), analyzer=analyzer)
    with TestClient(kept) as c:
        c.cookies.set(COOKIE, token)
        assert c.get("/", follow_redirects=False).status_code == 200


def test_get_logout_does_not_sign_out(web: TestClient, engine: Engine) -> None:
    page = web.get("/logout", follow_redirects=False)
    assert page.status_code == 200
    assert "Sign out of IssueLens</button>" in page.text and 'method="post"' in page.text
    assert len(_rows(engine)) == 1
    assert web.get("/", follow_redirects=False).status_code == 200
    web.cookies.clear()
    signed_out = web.get("/logout", follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"


def test_logout_needs_the_token_and_revokes_the_session(web: TestClient, engine: Engine) -> None:
    cid = _cluster(engine)
    old, csrf = web.cookies[COOKIE], session_token(web)
    for data in ({"next": "/"}, {"csrf_token": "forged"}):
        r = web.post("/logout", data=data, follow_redirects=False)
        assert r.status_code == 403 and "csrf_token is missing or does not belong" in r.text
    assert len(_rows(engine)) == 1 and web.get("/", follow_redirects=False).status_code == 200

    out = web.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert COOKIE not in web.cookies and _rows(engine) == []
    # The old cookie, replayed (say, copied before the sign-out), opens nothing.
    web.cookies.set(COOKIE, old)
    for path in ("/", "/clusters", f"/clusters/{cid}"):
        r = web.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    r = web.post(
        f"/clusters/{cid}/label",
        data={"label": "CX", "author": "a@example.com", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert _labels(engine) == []


def test_label_forms_need_this_sessions_csrf_token(web: TestClient, engine: Engine) -> None:
    cid = _cluster(engine)
    csrf = session_token(web)
    other = TestClient(web.app)  # a second browser with its own sign-in
    assert sign_in(other).status_code == 303
    foreign = session_token(other)
    assert foreign != csrf
    form = {"label": "CX", "subcategory": "billing", "author": "a@example.com"}
    for token in (None, "", "forged", foreign, csrf + "x"):
        data = form if token is None else {**form, "csrf_token": token}
        r = web.post(f"/clusters/{cid}/label", data=data, follow_redirects=False)
        assert r.status_code == 403, token
        assert "csrf_token is missing or does not belong to this sign-in" in r.text
        assert "Nothing was changed." in r.text
    assert _labels(engine) == []

    ok = web.post(
        f"/clusters/{cid}/label", data={**form, "csrf_token": csrf}, follow_redirects=False
    )
    assert ok.status_code == 303 and _labels(engine) == [(cid, "CX")]
    for token in (None, foreign):
        data = {"confirm": "1"} if token is None else {"csrf_token": token}
        r = web.post(f"/clusters/{cid}/label/delete", data=data, follow_redirects=False)
        assert r.status_code == 403, token
    assert _labels(engine) == [(cid, "CX")]
    gone = web.post(
        f"/clusters/{cid}/label/delete", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert gone.status_code == 303 and _labels(engine) == []


def test_cross_origin_posts_are_refused(web: TestClient, engine: Engine) -> None:
    cid = _cluster(engine)
    csrf = session_token(web)
    data = {"label": "CX", "author": "a@example.com", "csrf_token": csrf}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "http://testserver:8080"},  # another port of the same host
        {"Origin": "http://sub.testserver"},  # a subdomain
        {"Origin": "https://testserver"},  # another scheme
        {"Origin": "null"},
        {"Origin": "http://evil.example", "Referer": "http://testserver/clusters"},
        {"Referer": "http://evil.example/page"},
    ):
        r = web.post(f"/clusters/{cid}/label", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403, headers
        assert "This form was sent from another site" in r.text, headers
        assert "expected &#39;http://testserver&#39;" in r.text
    assert _labels(engine) == []
    out = web.post("/logout", data={"csrf_token": csrf}, headers={"Origin": "http://evil.example"})
    assert out.status_code == 403 and len(_rows(engine)) == 1

    for headers in (
        {"Origin": "http://testserver"},
        {"Origin": "http://TestServer:80"},  # the default port, spelled out
        {"Referer": f"http://testserver/clusters/{cid}"},
        {},  # neither sent: the token alone decides
    ):
        r = web.post(f"/clusters/{cid}/label", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 303, headers
    assert _labels(engine) == [(cid, "CX")]

    # The sign-in form too.
    fresh = TestClient(web.app)
    token = form_token(fresh.get("/login").text, "/login")
    r = fresh.post(
        "/login",
        data={"key": API_KEY, "csrf_token": token},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403 and "This form was sent from another site" in r.text
    assert COOKIE not in fresh.cookies and len(_rows(engine)) == 1


def test_form_posts_must_be_forms(web: TestClient, engine: Engine) -> None:
    cid = _cluster(engine)
    csrf = session_token(web)
    body = f"label=CX&author=a%40example.com&csrf_token={csrf}"
    for ctype, shown in (
        ("text/plain", "'text/plain'"),
        ("application/json", "'application/json'"),
        (None, "none"),
    ):
        headers = {} if ctype is None else {"content-type": ctype}
        r = web.post(f"/clusters/{cid}/label", content=body, headers=headers)
        assert r.status_code == 415, ctype
        assert f"this request's Content-Type is {shown}." in html.unescape(r.text)
    r = web.post(
        f"/clusters/{cid}/label/delete",
        json={"csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 415
    logout = web.post(
        "/logout", content=f"csrf_token={csrf}", headers={"content-type": "text/plain"}
    )
    assert logout.status_code == 415 and len(_rows(engine)) == 1
    assert _labels(engine) == []

    # Multipart form data is a form too; a file in it is not.
    with_file, ctype = _multipart(
        {"label": "CX", "author": "a@example.com", "csrf_token": csrf}, True
    )
    r = web.post(f"/clusters/{cid}/label", content=with_file, headers={"content-type": ctype})
    assert r.status_code == 422 and "Too many files" in r.text
    multipart, ctype = _multipart({"label": "CX", "author": "a@example.com", "csrf_token": csrf})
    r = web.post(
        f"/clusters/{cid}/label",
        content=multipart,
        headers={"content-type": ctype},
        follow_redirects=False,
    )
    assert r.status_code == 303 and _labels(engine) == [(cid, "CX")]
    # Url-encoded with a charset parameter is still url-encoded.
    r = web.post(
        f"/clusters/{cid}/label/delete",
        content=f"csrf_token={csrf}",
        headers={"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and _labels(engine) == []

    # Too big or too many fields: refused, with what was wrong.
    big = web.post(f"/clusters/{cid}/label", data={"note": "n" * 70_000, "csrf_token": csrf})
    assert big.status_code == 413 and "bytes; the limit is 64000." in big.text
    many = web.post(
        f"/clusters/{cid}/label", data={**{f"f{i}": "x" for i in range(30)}, "csrf_token": csrf}
    )
    assert many.status_code == 422 and "more than 20 fields" in many.text
    assert _labels(engine) == []


def test_sign_in_form_has_a_double_submit_token(client: TestClient, engine: Engine) -> None:
    # No cookie, no token: refused, and the form is shown again with a fresh token.
    r = client.post("/login", data={"key": API_KEY}, follow_redirects=False)
    assert r.status_code == 403 and "The sign-in form expired" in r.text
    assert COOKIE not in client.cookies and form_token(r.text, "/login")

    page = client.get("/login")
    cookie = client.cookies["issuelens_login"]
    login_cookie = _set_cookie(page.headers, "issuelens_login")
    assert "Path=/login" in login_cookie and "HttpOnly" in login_cookie
    assert "Max-Age=3600" in login_cookie and "SameSite=strict" in login_cookie
    token = form_token(page.text, "/login")
    assert cookie not in page.text  # the cookie's value is never in the page
    # A second tab gets the same token, so both forms work.
    assert form_token(client.get("/login").text, "/login") == token

    other = TestClient(client.app)
    other_token = form_token(other.get("/login").text, "/login")
    stale_cookie = f"{int(time.time()) - 7200}.abcdefgh"
    planted = f"{int(time.time())}.planted"
    future = f"{int(time.time()) + 7200}.abcdefgh"
    for jar, field in (
        (cookie, "forged"),
        (cookie, other_token),  # another browser's token
        (cookie, ""),
        (stale_cookie, login_signature(stale_cookie, "test-salt")),  # signed, but expired
        (future, login_signature(future, "test-salt")),  # signed, from the future
        (planted, login_signature(planted, "another-secret")),  # made up elsewhere
    ):
        client.cookies.set("issuelens_login", jar, path="/login")
        r = client.post(
            "/login", data={"key": API_KEY, "csrf_token": field}, follow_redirects=False
        )
        assert r.status_code == 403, (jar, field)
        assert COOKIE not in client.cookies
    assert _rows(engine) == []

    client.cookies.clear()
    assert sign_in(client).status_code == 303 and len(_rows(engine)) == 1
    assert client.get("/", follow_redirects=False).status_code == 200


def test_sign_in_failures_and_bearer_failures_count_together(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    app = create_app(make_settings(api_key_failure_limit=4), analyzer=analyzer)
    with TestClient(app) as c:
        for _ in range(2):
            assert c.get("/v1/tickets", headers=BAD).status_code == 401
        for _ in range(2):
            r = sign_in(c, "not-the-key")
            assert r.status_code == 401 and "That API key is not valid." in r.text
        blocked = sign_in(c)  # the right key, but the client is blocked
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 290
        assert "Too many wrong API keys from this address. Try again in" in blocked.text
        assert COOKIE not in c.cookies and _rows(engine) == []
        assert form_token(blocked.text, "/login")  # the form is still there for later
        assert c.get("/v1/tickets", headers=AUTH).status_code == 429
        # Another address signs in as usual.
        other = TestClient(app, client=("203.0.113.5", 4000))
        assert sign_in(other).status_code == 303 and len(_rows(engine)) == 1


def test_a_flood_of_addresses_keeps_the_table_capped(
    make_settings: Callable[..., Settings], analyzer: Analyzer
) -> None:
    app = create_app(make_settings(api_key_failure_limit=2), analyzer=analyzer)
    with TestClient(app) as c:
        assert c.get("/v1/tickets", headers=BAD).status_code == 401
        guard = c.app.state.key_guard  # type: ignore[attr-defined]
        assert guard.max_clients == 10_000 and len(guard) == 1
        guard.max_clients = 50  # the same code path, a cap small enough to reach here
        for i in range(120):
            other = TestClient(app, client=(f"192.0.2.{i}", 4000))
            assert other.get("/v1/tickets", headers=BAD).status_code == 401
        assert len(guard) == 50
