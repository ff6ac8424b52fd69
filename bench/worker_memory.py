"""The worker's memory and fairness under a flood of long tickets (issue 17).

A fresh database, the API (`uvicorn app.main:app`, no worker in it) and one standalone worker
process (`python -m app.worker`, as a deployment runs it). The worker's resident memory (RSS)
is read once it is idle after loading; then N long tickets (default 240 of 20,000 characters,
each a different customer thread made of the project's written tickets, not one repeated
character) are POSTed ten at a time, and halfway through one short ticket from another source.
The worker drains the queue; the bench prints its RSS before, at its peak and after, the ratio
after/before (target: at most 1.2), how long the short ticket waited from its POST to being
analysed (target: a couple of seconds), and the throughput.

    python bench/worker_memory.py                  # 240 x 20,000 characters on SQLite
    python bench/worker_memory.py --quick          # 40 x 20,000
    python bench/worker_memory.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_worker_memory

With --database-url the database it names is dropped and created again. `measure(...)` does
the same from Python and returns the numbers as a dict (bench/abuse.py calls it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from sqlalchemy import Engine, make_url, text  # noqa: E402

from bench.common import ROOT, print_table  # noqa: E402
from bench.triage import free_port  # noqa: E402

API_KEY = "bench-worker-memory"
MEMORY_TARGET = 1.2  # RSS after the flood at most 20% over the idle worker's
SHORT_WAIT_TARGET_S = 3.0


def long_texts(n: int, chars: int, *, seed: int = 17) -> list[str]:
    """`n` different long customer threads of `chars` characters: the project's written
    tickets (fixtures/uxcx, nine industries), shuffled and joined as replies in one message."""
    pool = [
        json.loads(line)["text"]
        for path in sorted((ROOT / "fixtures" / "uxcx").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts: list[str] = []
        size = 0
        while size < chars:
            part = rng.choice(pool)
            parts.append(part)
            size += len(part) + 2
        out.append("\n\n".join(parts)[:chars].rstrip())
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process (all its threads), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used (user + system, all threads), from /proc (Linux): less
    sensitive than wall time to what else runs on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh_database(url: str, tmp: Path) -> str:
    """A SQLite file under `tmp`, or the PostgreSQL database named in `url` dropped and made
    again (through the server's `postgres` database)."""
    if not url:
        return f"sqlite:///{tmp / 'bench.db'}"
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql") or not parsed.database:
        raise SystemExit(f"--database-url must name a PostgreSQL database, not {url!r}")
    import psycopg
    from psycopg import sql

    admin = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        name = sql.Identifier(parsed.database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return url


class Sampler:
    """The peak RSS of a process, read every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait_ready(http: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the API exited with {server.returncode}")
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready in 180 s")


def _wait_worker_idle(log_path: Path, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker has loaded its analysers and entered its loop."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited: {log_path.read_text()[-2000:]}")
        if "worker started" in log_path.read_text(errors="replace"):
            time.sleep(2.0)  # its first idle poll: nothing else still loading
            return
        time.sleep(0.2)
    raise RuntimeError("the worker did not start in 180 s")


def _pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM ticket WHERE status = 'pending'")).scalar_one()
        )


def _status(engine: Engine, ticket_id: int) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT status FROM ticket WHERE id = :i"), {"i": ticket_id}
            ).scalar_one()
        )


def measure(
    *,
    count: int = 240,
    chars: int = 20_000,
    database_url: str = "",
    batch_chars: int | None = None,
    worker_priority: str = "normal",
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Run the flood once against a fresh database; returns the numbers (see the module)."""
    from app.core.db import make_engine

    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-memory-"))
    db_url = fresh_database(database_url, tmp)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DATA_DIR": str(tmp),
        "AUTHOR_HASH_SALT": "bench",
        "API_KEYS": API_KEY,
        "WORKER_IN_PROCESS": "false",
        # SCHED_IDLE (the default) would measure this machine's other load, not the worker.
        "WORKER_PRIORITY": worker_priority,
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    if batch_chars is not None:
        env["WORKER_BATCH_CHARS"] = str(batch_chars)
    subprocess.run([sys.executable, "-m", "app.migrate"], env=env, cwd=ROOT, check=True)
    texts = long_texts(count, chars)
    port = free_port()
    api_log, worker_log = tmp / "api.log", tmp / "worker.log"
    with api_log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
             "--log-level", "warning", "--no-access-log"],
            env={**env, "LOG_LEVEL": "WARNING"}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.worker"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    engine = make_engine(db_url)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=120, headers=headers
        ) as http:
            _wait_ready(http, server)
            _wait_worker_idle(worker_log, worker)
            before = rss_mb(worker.pid)
            cpu_before = cpu_s(worker.pid)
            short_id, short_sent = 0, 0.0
            with Sampler(worker.pid) as sampler:
                start = time.perf_counter()
                for i in range(0, count, 10):
                    items = [
                        {"source": "email", "external_id": f"long-{j}", "body": texts[j]}
                        for j in range(i, min(i + 10, count))
                    ]
                    http.post("/v1/tickets", json=items).raise_for_status()
                    if not short_id and i + 10 >= count // 2:
                        r = http.post(
                            "/v1/tickets",
                            json={
                                "source": "twitter",
                                "external_id": "another-client",
                                "body": "@SkyLineAir I was charged twice for one booking",
                            },
                        )
                        r.raise_for_status()
                        short_sent = time.perf_counter()
                        short_id = int(r.json()["data"][0]["id"])
                queued = time.perf_counter() - start
                short_wait = None
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker died: {worker_log.read_text()[-2000:]}")
                    if short_wait is None and _status(engine, short_id) != "pending":
                        short_wait = time.perf_counter() - short_sent
                    if short_wait is not None and _pending(engine) == 0:
                        break
                    time.sleep(0.05)
                else:
                    raise RuntimeError(f"the queue was not drained in {timeout_s:.0f} s")
                drained = time.perf_counter() - start
            time.sleep(2.0)  # the worker's next idle poll: whatever it frees late is freed
            after = rss_mb(worker.pid)
            cpu = cpu_s(worker.pid) - cpu_before
        with engine.connect() as conn:
            statuses: dict[str, int] = {
                str(status): int(n)
                for status, n in conn.execute(
                    text("SELECT status, count(*) FROM ticket GROUP BY status")
                ).all()
            }
    finally:
        engine.dispose()
        for proc in (worker, server):
            proc.terminate()
        for proc in (worker, server):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {
        "database": db_url.split(":")[0],
        "tickets": count,
        "chars_per_ticket": chars,
        "batch_chars": batch_chars,
        "statuses": statuses,
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(sampler.peak, 1),
        "rss_after_mb": round(after, 1),
        "rss_after_ratio": round(after / before, 3),
        "short_wait_s": round(short_wait, 2),
        "queued_s": round(queued, 2),
        "drained_s": round(drained, 2),
        "tickets_per_s": round((count + 1) / drained, 2),
        "chars_per_s": round(count * chars / drained),
        "worker_cpu_s": round(cpu, 1),
        "worker_cpu_ms_per_1k_chars": round(1000 * cpu / (count * chars / 1000), 2),
        "memory_ok": after <= before * MEMORY_TARGET,
        "short_wait_ok": short_wait <= SHORT_WAIT_TARGET_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=None, help="long tickets (default 240)")
    parser.add_argument("--chars", type=int, default=20_000, help="characters per long ticket")
    parser.add_argument("--quick", action="store_true", help="40 long tickets")
    parser.add_argument("--database-url", default="", help="PostgreSQL (dropped and recreated)")
    parser.add_argument("--batch-chars", type=int, default=None, help="WORKER_BATCH_CHARS")
    parser.add_argument("--worker-priority", default="normal", choices=["idle", "nice", "normal"])
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    count = args.count or (40 if args.quick else 240)
    result = measure(
        count=count,
        chars=args.chars,
        database_url=args.database_url,
        batch_chars=args.batch_chars,
        worker_priority=args.worker_priority,
    )
    print()
    print_table(
        [
            ["worker RSS before (idle, loaded)", f"{result['rss_before_mb']:.0f} MB"],
            ["worker RSS peak", f"{result['rss_peak_mb']:.0f} MB"],
            ["worker RSS after", f"{result['rss_after_mb']:.0f} MB"],
            [
                "after / before",
                f"{result['rss_after_ratio']:.2f} (target <= {MEMORY_TARGET}: "
                f"{'ok' if result['memory_ok'] else 'MISSED'})",
            ],
            [
                "short ticket's wait",
                f"{result['short_wait_s']:.2f} s (target <= {SHORT_WAIT_TARGET_S:.0f} s: "
                f"{'ok' if result['short_wait_ok'] else 'MISSED'})",
            ],
            [
                "throughput",
                f"{result['tickets_per_s']:.2f} tickets/s, {result['chars_per_s']:,} chars/s "
                f"({count} x {args.chars:,} + 1 drained in {result['drained_s']:.1f} s)",
            ],
            [
                "worker CPU",
                f"{result['worker_cpu_s']:.1f} s ({result['worker_cpu_ms_per_1k_chars']:.2f} ms "
                "per 1,000 characters)",
            ],
            ["statuses", json.dumps(result["statuses"])],
        ],
        ["measure", f"{result['database']}"],
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
