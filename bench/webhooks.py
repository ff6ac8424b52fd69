"""Zendesk webhooks under load, with a worker killed mid-run, against real PostgreSQL.

A fresh database, 2 API processes (`python -m app --processes 2`) and 2 worker processes. A
seeded plan of signed `ticket.created` deliveries is sent to POST /v1/webhooks/zendesk with at
most `--concurrency` in flight: unique tickets, exact repeats of earlier ones (same bytes,
re-signed with a fresh timestamp, as a helpdesk retry does) and deliveries signed with a wrong
secret (must get 401, nothing stored). At ~30% of the deliveries worker 1 is SIGKILLed and,
2 s later, replaced. After the last delivery the queue must drain: every stored ticket
analysed, none lost, none duplicated.

    python bench/webhooks.py --deliveries 5000 --concurrency 50 --json /tmp/webhooks.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import hmac
import io
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.common import ROOT, print_table  # noqa: E402

FIXTURE = ROOT / "fixtures" / "webhooks" / "zendesk" / "ticket_created.json"
ENDPOINT = "/v1/webhooks/zendesk"
SECRET = "bench-zendesk-webhook-secret"
WRONG_SECRET = "not-the-zendesk-webhook-secret"
API_KEY = "bench-api-key"
FIRST_TICKET = 700_000
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
KILL_AT_SHARE = 0.30
DRAIN_LIMIT_S = 600.0
P99_LIMIT_MS = 100.0
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# Short customer problems, UX (product friction) and CX (service) mixed; {n} is the ticket number.
PROBLEMS: list[tuple[str, str]] = [
    (
        "App crashes on launch",
        "Since the latest update the app closes as soon as I open it. Ticket {n}.",
    ),
    (
        "Cannot log in",
        "I reset my password twice and the login page still says invalid credentials (#{n}).",
    ),
    (
        "Notes not syncing",
        "Notes I write on my laptop never show up on my phone any more. Ref {n}.",
    ),
    (
        "Checkout button does nothing",
        "I click Pay now and nothing happens, no error, no order. Ticket {n}.",
    ),
    (
        "Dashboard takes forever",
        "The reports dashboard needs over a minute to load since Monday (case {n}).",
    ),
    (
        "CSV export fails",
        "Exporting my contacts to CSV ends with 'something went wrong' every time. #{n}",
    ),
    (
        "Dark mode text unreadable",
        "In dark mode the labels are dark grey on black, I cannot read the settings. Ref {n}.",
    ),
    (
        "Push notifications stopped",
        "I no longer get any push notifications on Android after the update. Ticket {n}.",
    ),
    (
        "2FA code never arrives",
        "The two-factor code is never sent so I am locked out of my account (#{n}).",
    ),
    (
        "Search shows no results",
        "Searching for an invoice number I can see in the list returns nothing. Case {n}.",
    ),
    (
        "Upload stuck at 99%",
        "Every file upload freezes at 99% and never finishes, tried three browsers. Ref {n}.",
    ),
    (
        "Calendar in the wrong time zone",
        "All my meetings show one hour late since the clocks changed. Ticket {n}.",
    ),
    (
        "Blank page in Firefox",
        "The settings page is completely white in Firefox, Chrome works. #{n}",
    ),
    (
        "Please add bulk edit",
        "There is no way to change the status of many items at once, I edit 200 by hand "
        "each week. Ref {n}.",
    ),
    (
        "Logged out when opening invoices",
        "The app logs me out every time I switch to the invoices tab. Ticket {n}.",
    ),
    (
        "Error when saving my profile",
        "Saving my profile shows an internal error and my changes are lost (case {n}).",
    ),
    (
        "Still no reply after a week",
        "I opened a request seven days ago and nobody has answered yet. Ticket {n}.",
    ),
    (
        "Order arrived damaged",
        "The box was crushed and the blender inside is cracked. Order ref {n}.",
    ),
    (
        "Charged twice",
        "My card was charged twice for the same order this morning, please fix (#{n}).",
    ),
    (
        "Refund not received",
        "You confirmed my refund three weeks ago and the money is still not back. Ref {n}.",
    ),
    (
        "Cancel my subscription",
        "I have asked twice to cancel my plan and I was billed again. Ticket {n}.",
    ),
    (
        "Parcel never delivered",
        "Tracking says delivered but nothing arrived and the courier will not help. #{n}",
    ),
    (
        "Rude agent on the phone",
        "The agent I spoke to hung up on me when I asked for a manager (case {n}).",
    ),
    (
        "Wrong item shipped",
        "I ordered a size M blue jacket and received a red one in XL. Ref {n}.",
    ),
    (
        "Invoice shows wrong company",
        "The invoice has our old company name and VAT number, finance cannot book it. Ticket {n}.",
    ),
    (
        "Delivery delayed again",
        "My delivery has been pushed back for the third time with no explanation (#{n}).",
    ),
    (
        "Chat closed without answer",
        "Your chat agent closed my case without solving anything. Ref {n}.",
    ),
    (
        "Promised callback never came",
        "I was told someone would call me back within a day, that was last week. Ticket {n}.",
    ),
    (
        "Price changed at checkout",
        "The price was 49 on the product page and 59 at checkout. Case {n}.",
    ),
    (
        "Return label missing",
        "I want to return shoes but the return label link in the e-mail is missing. #{n}",
    ),
    (
        "Renewed without notice",
        "My membership renewed for a full year without any reminder, I want my money "
        "back. Ref {n}.",
    ),
    (
        "Voucher not accepted",
        "The voucher your support team gave me is rejected at checkout. Ticket {n}.",
    ),
    (
        "Waiting on hold for an hour",
        "I waited 58 minutes on hold and the line dropped before anyone answered (#{n}).",
    ),
    (
        "Sync conflicts duplicate my tasks",
        "Every sync creates a copy of each task, I now have four of everything. Ref {n}.",
    ),
]


@dataclass
class Delivery:
    """One planned POST: its body bytes and what kind of delivery it is."""

    seq: int
    kind: str  # "new", "repeat" or "bad"
    ticket: int
    body: bytes
    status: int | str | None = None
    latency_s: float = 0.0


@dataclass
class Run:
    """What happened while sending: worker processes and the kill."""

    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kill_note: str = "not done (--no-kill)"
    kill_info: dict[str, Any] = field(default_factory=dict)


def utc_now() -> str:
    """The current UTC time as Zendesk writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's signature: base64(HMAC-SHA256(secret, timestamp + raw body))."""
    mac = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def event_id(rng: random.Random) -> str:
    """A ULID-shaped event id (26 Crockford base32 characters)."""
    return "".join(rng.choice(ULID_ALPHABET) for _ in range(26))


def build_plan(
    *, n: int, repeat_share: float, bad_share: float, seed: int
) -> tuple[list[Delivery], int]:
    """The seeded deliveries, shuffled with every repeat after its original; and unique valid."""
    rng = random.Random(seed)
    template = json.loads(FIXTURE.read_text(encoding="utf-8"))
    n_repeat = round(n * repeat_share)
    n_bad = round(n * bad_share)
    n_new = n - n_repeat - n_bad
    if n_new < 1 or n_repeat < 0 or n_bad < 0:
        raise SystemExit("--repeat-share + --bad-share must leave at least one new delivery")
    now = utc_now()
    originals: list[Delivery] = []
    seen_ids: set[str] = set()
    for i in range(n_new + n_bad):
        number = FIRST_TICKET + i
        subject, description = rng.choice(PROBLEMS)
        payload = copy.deepcopy(template)
        eid = event_id(rng)
        while eid in seen_ids:
            eid = event_id(rng)
        seen_ids.add(eid)
        payload["id"] = eid
        payload["time"] = now
        payload["subject"] = f"zen:ticket:{number}"
        detail = payload["detail"]
        detail["id"] = str(number)
        detail["subject"] = subject
        detail["description"] = description.format(n=number)
        detail["created_at"] = now
        detail["updated_at"] = now
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        kind = "new" if i < n_new else "bad"
        originals.append(Delivery(seq=0, kind=kind, ticket=number, body=body))
    rng.shuffle(originals)
    # Sort keys: originals at their shuffled position, each repeat somewhere after its original.
    keyed: list[tuple[float, Delivery]] = [(float(i), d) for i, d in enumerate(originals)]
    valid_positions = [i for i, d in enumerate(originals) if d.kind == "new"]
    for _ in range(n_repeat):
        pos = rng.choice(valid_positions)
        orig = originals[pos]
        key = rng.uniform(pos + 0.5, len(originals) + 0.5)
        keyed.append((key, Delivery(seq=0, kind="repeat", ticket=orig.ticket, body=orig.body)))
    keyed.sort(key=lambda kd: kd[0])
    plan = [d for _, d in keyed]
    for i, d in enumerate(plan):
        d.seq = i
    return plan, n_new


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def fresh_database(name: str) -> None:
    """DROP and CREATE the bench database."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start(cmd: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, stdout/stderr to a log file."""
    log = log_path.open("ab")
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()  # the child holds its own copy
    return proc


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL what is still there after 15 s."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # also any child left behind in the group
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.wait(timeout=10)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(base: str, server: subprocess.Popen[bytes], log_path: Path) -> float:
    """Block until GET /readyz answers 200; seconds waited."""
    start_t = time.perf_counter()
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=base, timeout=10) as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"server exited with {server.returncode}:\n{tail(log_path)}")
            try:
                if http.get("/readyz").status_code == 200:
                    return time.perf_counter() - start_t
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise SystemExit(f"/readyz not 200 after 300 s:\n{tail(log_path)}")


class Connection:
    """One keep-alive HTTP/1.1 connection: a load generator's client, so the bench's own CPU
    (on the same 2 cores as the service) stays small next to the server's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, head: bytes, body: bytes) -> int:
        """Send one request, read the whole response; returns the status code."""
        self.writer.write(head + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        await self.reader.readexactly(length)
        if close:
            raise ConnectionResetError("server closed the connection")
        return status

    def close(self) -> None:
        """Drop the connection."""
        self.writer.close()


class Pool:
    """Up to `size` connections to host:port, reused while they stay open."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Connection] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` on an idle connection (or a new one)."""
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            conn = Connection(reader, writer)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        ).encode()
        try:
            status = await conn.post(head, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            conn.close()
            raise
        self.idle.append(conn)
        return status

    def close(self) -> None:
        """Close every idle connection."""
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def send_all(
    plan: list[Delivery],
    *,
    base: str,
    concurrency: int,
    kill: bool,
    run: Run,
    worker_cmd: list[str],
    worker_env: dict[str, str],
    tmp: Path,
) -> float:
    """Send every delivery in plan order, at most `concurrency` in flight; wall seconds."""
    sem = asyncio.Semaphore(concurrency)
    kill_at = max(1, round(len(plan) * KILL_AT_SHARE))
    tasks: set[asyncio.Task[None]] = set()
    kill_task: asyncio.Task[None] | None = None
    t0 = time.perf_counter()

    async def replace_worker(sent: int) -> None:
        victim = run.workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.perf_counter() - t0
        await asyncio.sleep(2.0)
        new = start(worker_cmd, env=worker_env, log_path=tmp / "worker3.log")
        run.workers.append(new)
        started_at = time.perf_counter() - t0
        run.kill_note = (
            f"worker1 (pid {victim.pid}) SIGKILLed after {sent} sent, t={killed_at:.1f} s; "
            f"worker3 (pid {new.pid}) started t={started_at:.1f} s"
        )
        run.kill_info = {
            "killed_pid": victim.pid,
            "after_deliveries": sent,
            "killed_at_s": killed_at,
            "replacement_pid": new.pid,
            "replacement_started_at_s": started_at,
        }

    async def one(client: Pool, d: Delivery) -> None:
        try:
            ts = utc_now()
            secret = WRONG_SECRET if d.kind == "bad" else SECRET
            headers = {
                "Content-Type": "application/json",
                "X-Zendesk-Webhook-Signature-Timestamp": ts,
                "X-Zendesk-Webhook-Signature": sign(secret, ts, d.body),
            }
            s = time.perf_counter()
            try:
                d.status = await client.post(ENDPOINT, d.body, headers)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                d.status = f"error:{type(exc).__name__}"
            d.latency_s = time.perf_counter() - s
        finally:
            sem.release()

    host, _, port = base.removeprefix("http://").partition(":")
    client = Pool(host, int(port), concurrency)
    try:
        for i, d in enumerate(plan):
            await sem.acquire()
            task = asyncio.create_task(one(client, d))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if kill and i + 1 == kill_at:
                # Sent count at the kill: the ones already answered plus those in flight.
                kill_task = asyncio.create_task(replace_worker(i + 1))
            if (i + 1) % max(1, len(plan) // 10) == 0:
                print(
                    f"  sent {i + 1}/{len(plan)} ({time.perf_counter() - t0:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        while tasks:
            await asyncio.gather(*list(tasks))
        wall = time.perf_counter() - t0
    finally:
        client.close()
    if kill_task is not None:
        await kill_task  # the replacement starts 2 s after the kill, outside the send phase
    return wall


def count(db_url: str) -> dict[str, int]:
    """Ticket counts straight from PostgreSQL."""
    with psycopg.connect(db_url) as conn:

        def one(q: str) -> int:
            row = conn.execute(q).fetchone()
            return int(row[0]) if row else 0

        return {
            "stored": one("SELECT count(*) FROM ticket"),
            "pending": one("SELECT count(*) FROM ticket WHERE status = 'pending'"),
            "done": one("SELECT count(*) FROM ticket WHERE status = 'done'"),
            "failed": one("SELECT count(*) FROM ticket WHERE status = 'failed'"),
            "distinct": one(
                "SELECT count(*) FROM (SELECT DISTINCT source, external_id FROM ticket) t"
            ),
        }


def bad_stored(db_url: str, bad: list[int]) -> int:
    """How many bad-signature tickets made it into the table (should be none)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ticket WHERE source = 'zendesk' AND external_id = ANY(%s)",
            ([str(b) for b in bad],),
        ).fetchone()
        return int(row[0]) if row else 0


def wait_drained(db_url: str, run: Run) -> tuple[float, bool]:
    """Poll every second until no ticket is pending (10 min at most); seconds and drained."""
    t0 = time.perf_counter()
    last_print = 0.0
    while True:
        pending = count(db_url)["pending"]
        waited = time.perf_counter() - t0
        if pending == 0:
            return waited, True
        if waited >= DRAIN_LIMIT_S:
            return waited, False
        if all(w.poll() is not None for w in run.workers):
            print("  every worker process has exited; the queue cannot drain", file=sys.stderr)
            return waited, False
        if waited - last_print >= 10:
            print(f"  draining: {pending} pending ({waited:.0f} s)", file=sys.stderr, flush=True)
            last_print = waited
        time.sleep(1.0)


def main() -> int:
    """Run the bench and print the table; 1 when a check fails."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=5000, help="POSTs in all")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    parser.add_argument("--repeat-share", type=float, default=0.10, help="exact repeats")
    parser.add_argument("--bad-share", type=float, default=0.05, help="wrong signatures")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--database", default="issuelens_bench", help="dropped and created")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL a worker")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes (0: webhooks alone, nothing analysed)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write numbers")
    args = parser.parse_args()
    # Progress goes to stderr; keep stdout in order with it when both are piped to one file.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    plan, expected = build_plan(
        n=args.deliveries, repeat_share=args.repeat_share, bad_share=args.bad_share, seed=args.seed
    )
    kinds = Counter(d.kind for d in plan)
    bad_tickets = [d.ticket for d in plan if d.kind == "bad"]
    if not port_free(args.port):
        raise SystemExit(f"port {args.port} is in use; pass --port")

    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    db_url = f"postgresql://postgres@127.0.0.1:5432/{args.database}"
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{args.database}",
        "WORKER_IN_PROCESS": "false",
        "ZENDESK_WEBHOOK_SECRET": SECRET,
        "API_KEYS": API_KEY,
        "DATA_DIR": str(tmp),
        "AUTHOR_HASH_SALT": "bench",
        "LOG_LEVEL": "WARNING",
    }
    worker_env = {**env, "TORCH_THREADS": "1"}
    worker_cmd = [python, "-m", "app.worker"]
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} CPUs; logs and data in {tmp}")
    print(
        f"plan: {len(plan)} deliveries = {kinds['new']} new, {kinds['repeat']} repeats, "
        f"{kinds['bad']} bad signatures (seed {args.seed}); database {args.database}"
    )

    fresh_database(args.database)
    subprocess.run([python, "-m", "app.migrate", "upgrade", "head"], env=env, cwd=ROOT, check=True)
    run = Run()
    server_log = tmp / "server.log"
    base = f"http://127.0.0.1:{args.port}"
    server: subprocess.Popen[bytes] | None = None
    try:
        server = start(
            # `python -m app` with 2 processes on one socket (not `uvicorn --workers 2`, whose
            # socket loses TCP_NODELAY: +40 ms per keep-alive request, uvicorn issue #3149).
            [python, "-m", "app", "--processes", "2"],
            env={**env, "HOST": "127.0.0.1", "PORT": str(args.port)},
            log_path=server_log,
        )
        for i in range(1, args.workers + 1):
            run.workers.append(start(worker_cmd, env=worker_env, log_path=tmp / f"worker{i}.log"))
        ready_s = wait_ready(base, server, server_log)
        print(f"ready after {ready_s:.1f} s (2 API processes, 2 workers)")

        import uvloop

        send_s = uvloop.run(
            send_all(
                plan,
                base=base,
                concurrency=args.concurrency,
                kill=not args.no_kill,
                run=run,
                worker_cmd=worker_cmd,
                worker_env=worker_env,
                tmp=tmp,
            )
        )
        drain_s, drained = wait_drained(db_url, run)
        counts = count(db_url)
        bad_in_db = bad_stored(db_url, bad_tickets)
        worker_exits = [w.poll() for w in run.workers]
        server_exit = server.poll()
    finally:
        stop([p for p in [server, *run.workers] if p is not None])

    lat_ms = np.asarray([d.latency_s for d in plan]) * 1000
    lat = {
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p95_ms": float(np.percentile(lat_ms, 95)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "max_ms": float(lat_ms.max()),
    }
    tenths = [float(np.percentile(chunk, 99)) for chunk in np.array_split(lat_ms, 10) if len(chunk)]
    statuses = Counter(str(d.status) for d in plan)
    by_kind = {k: Counter(str(d.status) for d in plan if d.kind == k) for k in kinds}
    n5xx = sum(1 for d in plan if isinstance(d.status, int) and d.status >= 500)
    bad_ok = all(d.status == 401 for d in plan if d.kind == "bad")
    valid_ok = all(d.status in (200, 202) for d in plan if d.kind != "bad")

    def fmt(c: Counter[str]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "-"

    print()
    print_table(
        [
            ["deliveries sent", str(len(plan))],
            ["send phase (wall s)", f"{send_s:.2f}"],
            ["deliveries/s", f"{len(plan) / send_s:.0f}"],
            [
                "latency p50 / p95 / p99 / max (ms)",
                f"{lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} / {lat['p99_ms']:.1f} / "
                f"{lat['max_ms']:.1f}",
            ],
            ["p99 per tenth of the run, in send order (ms)", " ".join(f"{v:.0f}" for v in tenths)],
            ["status codes", fmt(statuses)],
            ["  new deliveries", fmt(by_kind.get("new", Counter()))],
            ["  repeats", fmt(by_kind.get("repeat", Counter()))],
            ["  bad signatures", fmt(by_kind.get("bad", Counter()))],
            ["5xx", str(n5xx)],
            ["expected stored (unique valid tickets)", str(expected)],
            ["stored tickets", str(counts["stored"])],
            ["distinct (source, external_id)", str(counts["distinct"])],
            ["bad-signature tickets stored", str(bad_in_db)],
            ["analysed (done)", str(counts["done"])],
            ["failed", str(counts["failed"])],
            ["pending", str(counts["pending"])],
            [
                "drain after last delivery (s)",
                f"{drain_s:.1f}" + ("" if drained else " (NOT drained)"),
            ],
            ["worker kill", run.kill_note],
            [
                "process exit codes before stop",
                f"server {server_exit}, workers {worker_exits}",
            ],
        ],
        ["measure", "value"],
    )
    checks = {
        f"stored == expected ({counts['stored']} == {expected})": counts["stored"] == expected,
        f"analysed == stored ({counts['done']} == {counts['stored']})": counts["done"]
        == counts["stored"],
        f"zero 5xx ({n5xx})": n5xx == 0,
        f"every bad-signature delivery got 401 ({fmt(by_kind.get('bad', Counter()))})": bad_ok,
        "every valid delivery got 200/202": valid_ok,
        f"p99 < {P99_LIMIT_MS:.0f} ms ({lat['p99_ms']:.1f} ms)": lat["p99_ms"] < P99_LIMIT_MS,
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"\nlogs: {tmp}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "cpu_count": os.cpu_count(),
                    "deliveries": len(plan),
                    "plan": dict(kinds),
                    "concurrency": args.concurrency,
                    "seed": args.seed,
                    "send_s": send_s,
                    "deliveries_per_s": len(plan) / send_s,
                    "latency": lat,
                    "status_codes": dict(statuses),
                    "status_codes_by_kind": {k: dict(v) for k, v in by_kind.items()},
                    "5xx": n5xx,
                    "expected_stored": expected,
                    **{f"tickets_{k}": v for k, v in counts.items()},
                    "bad_signature_tickets_stored": bad_in_db,
                    "drain_s": drain_s,
                    "drained": drained,
                    "worker_kill": run.kill_info or None,
                    "checks": checks,
                    "logs": str(tmp),
                },
                indent=2,
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
