"""Signing in through the form, as a browser does, and reading a page's form token."""

from __future__ import annotations

import re

import httpx
from fastapi.testclient import TestClient

from tests.helpers import API_KEY

_TOKEN = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')


def form_token(html: str, action: str) -> str:
    """The csrf_token of the page's form that posts to `action`."""
    form = html.split(f'action="{action}"', 1)[1].split("</form>", 1)[0]
    match = _TOKEN.search(form)
    assert match is not None, f"no csrf_token in the form for {action}"
    return match.group(1)


def sign_in(client: TestClient, key: str = API_KEY) -> httpx.Response:
    """Open the sign-in page, then post its form with `key` (the answer is not followed)."""
    page = client.get("/login")
    assert page.status_code == 200
    token = form_token(page.text, "/login")
    return client.post("/login", data={"key": key, "csrf_token": token}, follow_redirects=False)


def session_token(client: TestClient) -> str:
    """The signed-in session's csrf_token, as every form of its pages carries it."""
    page = client.get("/logout")
    assert page.status_code == 200, page.text
    return form_token(page.text, "/logout")
