"""Issue 17's probes replayed against a live instance, with a normal client beside each one.

A fresh instance as `make run` starts it (`python -m app`: one process, the worker in it,
SQLite under a temporary directory; `--database postgres` for a fresh PostgreSQL database), with
an outbound receiver on a local port. While each probe runs, a second client keeps calling
`GET /healthz` and `POST /v1/triage` (a short text) and records every latency. For every probe
it prints: the answers, the time the probe took, the other client's worst and p99 latency
during it, and the server process's memory (RSS) before and after.

Targets: no 5xx; the other client's p99 under 100 ms during every probe; time linear in the
size of one request (a least-squares fit of time against size is printed: the exponent of
a power-law fit is ~1 for linear, ~2 for quadratic); memory back within 20% of its start after
the long-text batch; nothing personal in what is stored, served or sent out.

    python bench/abuse.py                 # the whole set (about 10 minutes on 2 cores)
    python bench/abuse.py --quick         # smaller sizes, 40 long tickets
    python bench/abuse.py --database postgres
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import hmac
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import DEFAULT_TWEETS, ROOT, load_texts, print_table  # noqa: E402
from bench.triage import free_port  # noqa: E402
from bench.webhooks import fresh_database, start, stop, tail  # noqa: E402

API_KEY = "abuse-api-key"
ZENDESK_SECRET = "abuse-zendesk-secret"
HELPSCOUT_SECRET = "abuse-helpscout-secret"
OUTBOUND_SECRET = "abuse-outbound-secret"
P99_LIMIT_MS = 100.0
MEMORY_SLACK = 0.20
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# What must never come back from the service once sent in (issue 17's leaks and the metadata).
LEAKS = {
    "4111.1111.1111.1111": "card 4111.1111.1111.1111 was charged twice",
    "de89 3704 0044 0532 0130 00": "refund to iban de89 3704 0044 0532 0130 00 please",
    "2125550142": "the courier should ring 2125550142 before coming",
    "555-1234": "my number is 555-1234 and nobody called",
}
META_LEAKS = {"customer_email": "dana.whitfield@example.com", "phone": "+44 7700 900461"}


# --- the instance ---------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """The outbound webhook's receiver: records each body; `delay_s` makes every POST slow."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.delay_s = 0.0
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        time.sleep(self.server.delay_s)
        self.server.bodies.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def rss_mb(pid: int) -> float:
    """The resident memory of a process and its threads, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sample:
    at: float
    what: str
    ms: float
    status: int


@dataclass
class Bystander:
    """The normal client: /healthz and a short triage, one after the other, all the time."""

    base: str
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        # Its own address (127.0.0.2): another client, whatever the probes' address earns.
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(
            base_url=self.base, timeout=120, headers=AUTH, transport=transport
        ) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                what = "healthz" if n % 2 else "triage"
                t0 = time.perf_counter()
                try:
                    if what == "healthz":
                        status = http.get("/healthz").status_code
                    else:
                        status = http.post(
                            "/v1/triage", json={"text": "The app crashes when I open settings"}
                        ).status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append(Sample(t0, what, (time.perf_counter() - t0) * 1000, status))
                time.sleep(0.02)

    def during(self, t0: float, t1: float) -> list[Sample]:
        """Samples that started in [t0, t1] or were in flight at t0."""
        return [s for s in self.samples if t0 - s.ms / 1000 <= s.at <= t1]


@dataclass
class Result:
    probe: str
    answer: str
    seconds: float
    other_p99_ms: float
    other_worst_ms: float
    other_errors: int
    rss_before: float
    rss_after: float
    ok: bool
    note: str = ""


@dataclass
class Bench:
    base: str
    pid: int
    bystander: Bystander
    receiver: Receiver
    db_path: Path | None
    results: list[Result] = field(default_factory=list)

    def probe(self, name: str, fn: Callable[[httpx.Client], tuple[str, bool, str]]) -> Result:
        """Run one probe with the bystander watching; record the answer, time and latencies."""
        time.sleep(0.3)
        before = rss_mb(self.pid)
        t0 = time.perf_counter()
        with httpx.Client(base_url=self.base, timeout=600, headers=AUTH) as http:
            answer, ok, note = fn(http)
        t1 = time.perf_counter()
        time.sleep(0.2)
        seen = self.bystander.during(t0, t1)
        lat = [s.ms for s in seen] or [0.0]
        p99 = float(np.percentile(lat, 99))
        errors = sum(s.status != 200 for s in seen)
        no_5xx = not re.search(r"\b5\d\d\b", answer)
        result = Result(
            name,
            answer,
            t1 - t0,
            p99,
            max(lat),
            errors,
            before,
            rss_mb(self.pid),
            ok and no_5xx and p99 < P99_LIMIT_MS and errors == 0,
            note,
        )
        self.results.append(result)
        mark = "ok  " if result.ok else "FAIL"
        print(
            f"  {mark} {name:<34} {t1 - t0:7.2f} s  other p99 {p99:6.1f} ms worst "
            f"{max(lat):6.1f} ms  rss {before:5.0f}->{result.rss_after:5.0f} MB  {answer}"
            + (f"  ({note})" if note else ""),
            flush=True,
        )
        return result


# --- helpers -------------------------------------------------------------------------------------


def ticket(external_id: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"source": "api", "external_id": external_id, "body": body, **extra}


def statuses(responses: list[httpx.Response]) -> str:
    counts: dict[int, int] = {}
    for r in responses:
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return " ".join(f"{n}x{code}" if n > 1 else str(code) for code, n in sorted(counts.items()))


def zendesk_headers(body: bytes, secret: str = ZENDESK_SECRET) -> dict[str, str]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    mac = hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "x-zendesk-webhook-signature": base64.b64encode(mac).decode(),
        "x-zendesk-webhook-signature-timestamp": stamp,
    }


def zendesk_body(ticket_id: int, text: str) -> bytes:
    payload = json.loads((ROOT / "fixtures/webhooks/zendesk/ticket_created.json").read_text())
    payload["id"] = f"abuse-{ticket_id}-{time.time_ns()}"
    payload["subject"] = f"zen:ticket:{ticket_id}"
    payload["detail"]["id"] = str(ticket_id)
    payload["detail"]["description"] = text
    return json.dumps(payload).encode()


def wait_analysed(http: httpx.Client, ids: list[int], limit_s: float) -> tuple[bool, float]:
    """Poll until every ticket is analysed (or failed); (all done, seconds)."""
    t0 = time.perf_counter()
    pending = set(ids)
    while pending and time.perf_counter() - t0 < limit_s:
        for tid in list(pending):
            status = http.get(f"/v1/tickets/{tid}").json().get("status")
            if status in ("done", "failed", "skipped"):
                pending.discard(tid)
        if pending:
            time.sleep(0.5)
    return not pending, time.perf_counter() - t0


def wait_idle(http: httpx.Client, limit_s: float = 300) -> None:
    """Until no ticket is pending analysis."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not http.get("/v1/tickets", params={"status": "pending", "limit": 1}).json()["data"]:
            return
        time.sleep(0.5)


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, str]:
    """The exponent k of seconds ~ size**k (log-log least squares) and a printable line."""
    xs = np.log(np.array(sizes, dtype=float))
    ys = np.log(np.maximum(np.array(seconds), 1e-4))
    k, c = np.polyfit(xs, ys, 1)
    lin = np.polyfit(np.array(sizes, dtype=float), np.array(seconds), 1)
    line = (
        f"time ~ size^{k:.2f}; linear fit {lin[0] * 1e6:.2f} us/char + {lin[1] * 1000:.1f} ms; "
        + ", ".join(f"{n}: {s * 1000:.0f} ms" for n, s in zip(sizes, seconds, strict=True))
    )
    return float(k), line


def long_texts(n: int, chars: int) -> list[str]:
    """n varied texts of `chars` characters, made of real support tweets."""
    tweets, _ = load_texts(DEFAULT_TWEETS if DEFAULT_TWEETS.exists() else None, 4000, seed=17)
    out = []
    for i in range(n):
        parts: list[str] = []
        size = 0
        j = i * 37
        while size < chars:
            t = tweets[j % len(tweets)]
            parts.append(t)
            size += len(t) + 1
            j += 1
        out.append(" ".join(parts)[:chars])
    return out


# --- the probes ----------------------------------------------------------------------------------


def probe_triage_size(bench: Bench, quick: bool) -> None:
    """POST /v1/triage with emoji floods and CJK of growing size: time must grow linearly."""
    sizes = [2_500, 5_000, 10_000] if quick else [5_000, 10_000, 20_000]
    for name, char in (("emoji", "\U0001f600"), ("CJK", "\u6f22")):
        seconds: list[float] = []

        def one(
            http: httpx.Client, n: int = 0, c: str = char, out: list[float] = seconds
        ) -> tuple[str, bool, str]:
            wait_idle(http)
            t0 = time.perf_counter()
            r = http.post("/v1/triage", json={"text": c * n})
            out.append(time.perf_counter() - t0)
            return str(r.status_code), r.status_code == 200, ""

        for n in sizes:
            bench.probe(f"triage {n} {name}", functools.partial(one, n=n))
        k, line = fit(sizes, seconds)
        print(f"    fit triage {name}: {line}")
        bench.results[-1].ok &= k < 1.4
        bench.results[-1].note = f"exponent {k:.2f}"


def probe_ticket_emoji(bench: Bench, quick: bool) -> None:
    """The same flood as a ticket: the worker analyses it while the API keeps answering."""
    n = 10_000 if quick else 20_000

    def run(http: httpx.Client) -> tuple[str, bool, str]:
        r = http.post("/v1/tickets", json=ticket("emoji-flood", "\U0001f600" * n))
        tid = r.json()["data"][0]["id"]
        done, secs = wait_analysed(http, [tid], 300)
        return f"{r.status_code}, analysed in {secs:.1f} s", done, ""

    bench.probe(f"ticket {n} emoji (worker)", run)


def probe_redaction(bench: Bench, quick: bool) -> None:
    """Bodies that made the old patterns backtrack, on /v1/tickets and a signed webhook."""
    n = 10_000 if quick else 20_000
    shapes = {
        "a.a.a": "a." * (n // 2),
        "inner spaces": "x" + " " * (n - 2) + "y",
        "digits 1 1 1": "1 " * (n // 2),
        "@@@": "@" * n,
    }
    for name, text in shapes.items():

        def one(http: httpx.Client, text: str = text, name: str = name) -> tuple[str, bool, str]:
            r = http.post("/v1/tickets", json=ticket(f"redact-{name}", text))
            return str(r.status_code), r.status_code in (200, 202), ""

        bench.probe(f"ticket {len(text)} chars '{name}'", one)

    def batch(http: httpx.Client) -> tuple[str, bool, str]:
        items = [ticket(f"aaa-{i}", "a." * (n // 2)) for i in range(20)]
        r = http.post("/v1/tickets", json=items)
        return str(r.status_code), r.status_code in (200, 202), f"{len(json.dumps(items))} bytes"

    bench.probe("batch of 20 'a.a.a' bodies", batch)

    def webhook(http: httpx.Client) -> tuple[str, bool, str]:
        body = zendesk_body(990_001, "a." * (n // 2))
        r = http.post("/v1/webhooks/zendesk", content=body, headers=zendesk_headers(body))
        return str(r.status_code), r.status_code in (200, 202), ""

    bench.probe("zendesk webhook 'a.a.a'", webhook)

    sizes = [5_000, 10_000, 20_000] if not quick else [2_500, 5_000, 10_000]
    seconds: list[float] = []
    for size in sizes:

        def timed(http: httpx.Client, size: int = size) -> tuple[str, bool, str]:
            items = [ticket(f"fit-{size}-{i}", "a." * (size // 2)) for i in range(20)]
            wait_idle(http)  # the worker analysing earlier probes would share the CPU
            t0 = time.perf_counter()
            r = http.post("/v1/tickets", json=items)
            seconds.append(time.perf_counter() - t0)
            return str(r.status_code), r.status_code in (200, 202), ""

        bench.probe(f"batch 20 x {size} 'a.a.a'", timed)
    k, line = fit(sizes, seconds)
    print(f"    fit redaction: {line}")
    bench.results[-1].ok &= k < 1.4
    bench.results[-1].note = f"exponent {k:.2f}"


def probe_poison(bench: Bench) -> None:
    """Metadata nested 300 deep is refused; a deep row from before the limit (written straight
    into the database) neither fails the pages nor stops the outbound sender."""

    def deep(levels: int) -> dict[str, Any]:
        root: dict[str, Any] = {}
        node = root
        for _ in range(levels):
            node["a"] = {}
            node = node["a"]
        return root

    def refused(http: httpx.Client) -> tuple[str, bool, str]:
        r = http.post("/v1/tickets", json=ticket("deep", "crash", metadata=deep(300)))
        return f"{r.status_code} {r.json().get('code')}", r.status_code == 422, ""

    bench.probe("metadata nested 300 deep", refused)
    db_path = bench.db_path
    if db_path is None:
        return

    def poison(http: httpx.Client) -> tuple[str, bool, str]:
        first = http.post("/v1/tickets", json=ticket("poison", "The app crashes on login"))
        pid = first.json()["data"][0]["id"]
        with sqlite3.connect(db_path, timeout=30) as db:
            db.execute("UPDATE ticket SET meta = ? WHERE id = ?", (json.dumps(deep(400)), pid))
        sent_before = len(bench.receiver.bodies)
        after = http.post("/v1/tickets", json=ticket("after-poison", "Refund never arrived"))
        aid = after.json()["data"][0]["id"]
        wait_analysed(http, [pid, aid], 120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            b'"after-poison"' in b for b in bench.receiver.bodies[sent_before:]
        ):
            time.sleep(0.5)
        delivered = any(b'"after-poison"' in b for b in bench.receiver.bodies[sent_before:])
        one, page = http.get(f"/v1/tickets/{pid}"), http.get("/v1/tickets")
        answer = f"GET {one.status_code}, list {page.status_code}, later delivery sent {delivered}"
        return answer, one.status_code == 200 and page.status_code == 200 and delivered, ""

    bench.probe("poison row (400 deep, in the DB)", poison)


def probe_memory(bench: Bench, quick: bool) -> None:
    """240 tickets of 20,000 characters, and halfway one short ticket from another source."""
    count = 40 if quick else 240
    texts = long_texts(count, 20_000)
    peak = [0.0]
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            peak[0] = max(peak[0], rss_mb(bench.pid))
            time.sleep(0.2)

    def run(http: httpx.Client) -> tuple[str, bool, str]:
        start_rss = rss_mb(bench.pid)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ids: list[int] = []
        short_id = 0
        t_short = 0.0
        for i in range(0, count, 10):
            r = http.post(
                "/v1/tickets", json=[ticket(f"long-{j}", texts[j]) for j in range(i, i + 10)]
            )
            ids += [d["id"] for d in r.json()["data"]]
            if i == count // 2 - (count // 2) % 10:
                t_short = time.perf_counter()
                s = http.post(
                    "/v1/tickets",
                    json={"source": "twitter", "external_id": "other-client", "body": "App down"},
                )
                short_id = s.json()["data"][0]["id"]
        short_done, _ = wait_analysed(http, [short_id], 600)
        short_wait = time.perf_counter() - t_short
        done, secs = wait_analysed(http, ids, 1800)
        time.sleep(5)  # let the worker go idle and give memory back
        watching.set()
        end_rss = rss_mb(bench.pid)
        within = end_rss <= start_rss * (1 + MEMORY_SLACK)
        answer = (
            f"{count} analysed {done} in {secs:.0f} s; rss {start_rss:.0f} -> peak {peak[0]:.0f} "
            f"-> {end_rss:.0f} MB ({end_rss / start_rss:.2f}x); other client's ticket analysed "
            f"{short_wait:.1f} s after it was sent"
        )
        return answer, done and short_done and within and short_wait < 10, ""

    bench.probe(f"worker memory: {count} x 20,000 chars", run)


def probe_calendar(bench: Bench) -> None:
    """Times and weeks at the ends of the calendar: 422 with the accepted range, never 500."""

    def run(http: httpx.Client) -> tuple[str, bool, str]:
        rs = [
            http.post(
                "/v1/tickets", json=ticket("cal-1", "x y", created_at="0001-01-01T00:00:00+05:00")
            ),
            http.post(
                "/v1/tickets", json=ticket("cal-2", "x y", created_at="9999-12-31T23:59:59-05:00")
            ),
            http.post(
                "/v1/posts",
                json={
                    "platform": "twitter",
                    "id": "cal-3",
                    "text": "x y",
                    "created_at": "Fri Dec 31 23:59:59 -0500 9999",
                },
            ),
            http.get("/v1/tickets", params={"received_from": "0001-01-01T00:00:00Z"}),
            http.get("/v1/digests/weekly", params={"week": "0001-W01"}),
            http.get("/v1/digests/weekly", params={"week": "9999-W52"}),
        ]
        answer = statuses(rs)
        return answer, all(r.status_code == 422 for r in rs), ""

    bench.probe("calendar edges", run)


_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _form_token(html: str, action: str) -> str:
    form = html.split(f'action="{action}"', 1)[1].split("</form>", 1)[0]
    match = _TOKEN.search(form)
    return match.group(1) if match else ""


def probe_web(bench: Bench) -> None:
    """The pages: week edges, forms without their token or from another origin, and a cookie
    that expires and is revoked at sign-out."""

    def run(http: httpx.Client) -> tuple[str, bool, str]:
        with httpx.Client(base_url=bench.base, follow_redirects=False) as web:
            login = web.get("/login")
            signed = web.post(
                "/login", data={"key": API_KEY, "csrf_token": _form_token(login.text, "/login")}
            )
            cookie = signed.headers.get("set-cookie", "")
            session = web.cookies.get("issuelens_session") or ""
            weeks = [web.get("/", params={"week": w}) for w in ("0001-W01", "9999-W52")]
            clusters = http.get("/v1/clusters").json().get("data") or [{"id": 1}]
            action = f"/clusters/{clusters[0]['id']}/label"
            no_token = web.post(action, data={"label": "UX"})
            other_origin = web.post(
                action,
                data={"label": "UX", "csrf_token": "x"},
                headers={"origin": "http://127.0.0.1:1"},
            )
            as_text = web.post(action, content=b"label=UX", headers={"content-type": "text/plain"})
            out_page = web.get("/logout")
            out = web.post("/logout", data={"csrf_token": _form_token(out_page.text, "/logout")})
        with httpx.Client(base_url=bench.base, follow_redirects=False) as replay:
            replay.cookies.set("issuelens_session", session)
            again = replay.get("/")
        answer = (
            f"sign-in {signed.status_code} max-age {'Max-Age' in cookie}; weeks "
            f"{statuses(weeks)}; no token {no_token.status_code}, other origin "
            f"{other_origin.status_code}, text/plain {as_text.status_code}; sign-out "
            f"{out.status_code}, old cookie -> {again.status_code} {again.headers.get('location')}"
        )
        ok = (
            "Max-Age" in cookie
            and all(w.status_code == 422 for w in weeks)
            and no_token.status_code == 403
            and other_origin.status_code == 403
            and as_text.status_code == 415
            and again.status_code == 303
        )
        return answer, ok, ""

    bench.probe("web session and forms", run)


def probe_pii(bench: Bench) -> None:
    """Issue 17's leaks in the body and metadata: not stored, not served, not sent."""

    def run(http: httpx.Client) -> tuple[str, bool, str]:
        sent_before = len(bench.receiver.bodies)
        ids = []
        for i, text in enumerate(LEAKS.values()):
            r = http.post("/v1/tickets", json=ticket(f"pii-{i}", text, metadata=META_LEAKS))
            ids.append(r.json()["data"][0]["id"])
        wait_analysed(http, ids, 120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(bench.receiver.bodies) - sent_before < len(ids):
            time.sleep(0.5)
        served = " ".join(http.get(f"/v1/tickets/{i}").text for i in ids)
        outbound = b" ".join(bench.receiver.bodies[sent_before:]).decode()
        values = [*LEAKS, *META_LEAKS.values()]
        leaked = [v for v in values if v in served or v in outbound]
        answer = (
            f"{len(ids)} tickets, {len(bench.receiver.bodies) - sent_before} sent; leaked {leaked}"
        )
        return answer, not leaked, ""

    bench.probe("personal data past redaction", run)


def probe_lesser(bench: Bench) -> None:
    """Key guessing, duplicate signatures, resent Help Scout events, broken ids, empty text."""

    def guessing(http: httpx.Client) -> tuple[str, bool, str]:
        # From a third address (127.0.0.3), so the block it earns falls on it alone.
        transport = httpx.HTTPTransport(local_address="127.0.0.3")
        with httpx.Client(base_url=bench.base, transport=transport) as guesser:
            rs = [
                guesser.get("/v1/tickets", headers={"Authorization": f"Bearer guess-{i}"})
                for i in range(12)
            ]
            good = guesser.get("/v1/tickets", headers=AUTH)
        blocked = rs[-1].status_code == 429 and "retry-after" in rs[-1].headers
        answer = f"{statuses(rs)}; then the right key: {good.status_code}"
        return answer, blocked and good.status_code == 429, ""

    bench.probe("12 wrong API keys", guessing)

    def two_signatures(http: httpx.Client) -> tuple[str, bool, str]:
        body = zendesk_body(990_002, "The app crashes when I upload a photo")
        good = zendesk_headers(body)
        bad = zendesk_headers(body, secret="wrong")
        headers = [
            ("content-type", "application/json"),
            (
                "x-zendesk-webhook-signature-timestamp",
                good["x-zendesk-webhook-signature-timestamp"],
            ),
            ("x-zendesk-webhook-signature", bad["x-zendesk-webhook-signature"]),
            ("x-zendesk-webhook-signature", good["x-zendesk-webhook-signature"]),
        ]
        r = httpx.post(f"{bench.base}/v1/webhooks/zendesk", content=body, headers=headers)
        return str(r.status_code), r.status_code == 401, ""

    bench.probe("two zendesk signature headers", two_signatures)

    def helpscout(http: httpx.Client) -> tuple[str, bool, str]:
        payload = json.loads((ROOT / "fixtures/webhooks/helpscout/convo.created.json").read_text())
        body = json.dumps(payload).encode()
        mac = hmac.new(HELPSCOUT_SECRET.encode(), body, hashlib.sha1).digest()
        sig = base64.b64encode(mac).decode()
        before = http.get("/v1/tickets", params={"source": "helpscout"}).json()["count"]
        rs = [
            httpx.post(
                f"{bench.base}/v1/webhooks/helpscout",
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-helpscout-signature": sig,
                    "x-helpscout-event": event,
                },
            )
            for event in ("convo.created", "convo.customer.reply.created")
        ]
        after = http.get("/v1/tickets", params={"source": "helpscout"}).json()["count"]
        return f"{statuses(rs)}; tickets +{after - before}", after - before <= 1, ""

    bench.probe("help scout resend, other event", helpscout)

    def broken(http: httpx.Client) -> tuple[str, bool, str]:
        raw = [
            b'{"source":"api","external_id":"sur-\\ud800","body":"one"}',
            b'{"source":"api","external_id":"sur-\\ud801","body":"two"}',
            '{"source":"api","external_id":"zw","body":"\u200b\u200c\u2060"}'.encode(),
        ]
        rs = [
            http.post("/v1/tickets", content=b, headers={"content-type": "application/json"})
            for b in raw
        ]
        return statuses(rs), all(r.status_code == 422 for r in rs), ""

    bench.probe("lone surrogates, zero-width body", broken)

    def headers(http: httpx.Client) -> tuple[str, bool, str]:
        r = http.get("/v1/digests/weekly", params={"format": "html"})
        csp = r.headers.get("content-security-policy", "")
        sniff = r.headers.get("x-content-type-options", "")
        return (
            f"{r.status_code} csp={bool(csp)} nosniff={sniff}",
            bool(csp) and sniff == "nosniff",
            "",
        )

    bench.probe("html digest headers", headers)


def probe_outbound_slow(bench: Bench) -> None:
    """A receiver that takes 2 s per POST while clients keep writing: no write waits on it."""

    def run(http: httpx.Client) -> tuple[str, bool, str]:
        bench.receiver.delay_s = 2.0
        try:
            ids = [
                http.post("/v1/tickets", json=ticket(f"slow-{i}", f"Parcel {i} never came")).json()[
                    "data"
                ][0]["id"]
                for i in range(6)
            ]
            wait_analysed(http, ids, 120)
            writes = []
            t_end = time.monotonic() + 6
            i = 0
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                r = http.post("/v1/tickets", json=ticket(f"during-{i}", "Late refund again"))
                writes.append(((time.perf_counter() - t0) * 1000, r.status_code))
                i += 1
                time.sleep(0.05)
        finally:
            bench.receiver.delay_s = 0.0
        worst = max(ms for ms, _ in writes)
        codes = statuses([httpx.Response(code) for _, code in writes])
        return f"{len(writes)} writes {codes}, worst {worst:.0f} ms", worst < 1000, ""

    bench.probe("outbound receiver 2 s per POST", run)


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and 40 long tickets")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="issuelens-abuse-"))
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    db_path: Path | None = None
    if args.database == "postgres":
        fresh_database("issuelens_abuse")
        db_url = "postgresql+psycopg://postgres@127.0.0.1:5432/issuelens_abuse"
    else:
        db_path = tmp / "app.db"
        db_url = f"sqlite:///{db_path}"
    port = args.port or free_port()
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DATA_DIR": str(tmp),
        "API_KEYS": API_KEY,
        "ZENDESK_WEBHOOK_SECRET": ZENDESK_SECRET,
        "HELPSCOUT_WEBHOOK_SECRET": HELPSCOUT_SECRET,
        "OUTBOUND_WEBHOOK_URL": receiver.url,
        "OUTBOUND_WEBHOOK_SECRET": OUTBOUND_SECRET,
        "AUTHOR_HASH_SALT": "abuse",
        "LOG_LEVEL": "WARNING",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    subprocess.run([python, "-m", "app.migrate", "upgrade", "head"], env=env, cwd=ROOT, check=True)
    log_path = tmp / "server.log"
    base = f"http://127.0.0.1:{port}"
    server = start([python, "-m", "app"], env=env, log_path=log_path)
    bystander = Bystander(base)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{tail(log_path)}")
            time.sleep(0.3)
        # Warm the models and the bystander's path before measuring.
        for _ in range(5):
            httpx.post(f"{base}/v1/triage", json={"text": "warm up"}, headers=AUTH, timeout=120)
        threading.Thread(target=bystander.run, daemon=True).start()
        time.sleep(1)
        bench = Bench(base, server.pid, bystander, receiver, db_path)
        print(f"instance: python -m app on {args.database}, pid {server.pid}, logs in {tmp}")
        print(f"machine: {os.cpu_count()} CPUs; quick={args.quick}")
        probe_triage_size(bench, args.quick)
        probe_ticket_emoji(bench, args.quick)
        probe_redaction(bench, args.quick)
        probe_poison(bench)
        probe_calendar(bench)
        probe_web(bench)
        probe_pii(bench)
        probe_lesser(bench)
        probe_outbound_slow(bench)
        if not args.skip_memory:
            probe_memory(bench, args.quick)
    finally:
        bystander.stop.set()
        stop([server])
        receiver.shutdown()
    rows = [
        [
            r.probe,
            r.answer[:60],
            f"{r.seconds:.2f}",
            f"{r.other_p99_ms:.1f}",
            f"{r.other_worst_ms:.1f}",
            f"{r.rss_before:.0f}->{r.rss_after:.0f}",
            "ok" if r.ok else "FAIL",
        ]
        for r in bench.results
    ]
    print()
    print_table(
        rows, ["probe", "answer", "time s", "other p99 ms", "other worst ms", "rss MB", "target"]
    )
    failed = [r.probe for r in bench.results if not r.ok]
    print(f"\n{len(bench.results) - len(failed)}/{len(bench.results)} probes met their targets")
    if failed:
        print("failed: " + "; ".join(failed))
    server_errors = [line for line in tail(log_path, 400).splitlines() if "Traceback" in line]
    print(f"server log tracebacks: {len(server_errors)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
