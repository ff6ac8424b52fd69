"""Service speed next to the raw encoder, measured in one run on this machine.

1. Raw encoder: sentence-transformers all-MiniLM-L6-v2, the same texts (batched, and one at a time).
2. Triage over HTTP: POST /v1/triage one text at a time against a real uvicorn server.
3. Enrichment: tickets POSTed to /v1/tickets, then the real worker drains the queue
   (language + embedding + sentiment + UX/CX + routing, stored) and tickets/s is reported.

    python bench/triage.py --data ../shared/datasets/support_tweets/inbound.csv
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import DEFAULT_TWEETS, ROOT, load_texts, percentiles, print_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_encoder(texts: list[str], single: list[str]) -> dict[str, float]:
    """sentence-transformers on its own: batched throughput and one-text latency."""
    from sentence_transformers import SentenceTransformer

    from app.nlp.embedder import packaged_encoder_path

    st = SentenceTransformer(str(packaged_encoder_path()), device="cpu")
    st.encode(texts[:64])  # warm-up
    start = time.perf_counter()
    st.encode(texts, batch_size=32)
    batched = time.perf_counter() - start
    lat = []
    for t in single:
        s = time.perf_counter()
        st.encode([t])
        lat.append(time.perf_counter() - s)
    return {"texts_per_s": len(texts) / batched, **percentiles(lat)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_TWEETS, help="CSV with a text column")
    parser.add_argument("--triage", type=int, default=1000, help="texts sent to /v1/triage")
    parser.add_argument("--enrich", type=int, default=5000, help="tickets queued and analysed")
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()

    texts, origin = load_texts(args.data, args.enrich + args.triage)
    enrich_texts, triage_texts = texts[: args.enrich], texts[args.enrich :]
    tmp = Path(tempfile.mkdtemp(prefix="bench-triage-"))
    db_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    print(f"texts: {origin}; triage {len(triage_texts)}, enrich {len(enrich_texts)}; db {db_url}")

    raw = raw_encoder(enrich_texts, triage_texts[:300])

    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DATA_DIR": str(tmp),
        "WORKER_IN_PROCESS": "false",
        "LOG_LEVEL": "WARNING",
        "AUTHOR_HASH_SALT": "bench",
        "API_KEYS": "bench-api-key",
    }
    subprocess.run([sys.executable, "-m", "app.migrate"], env=env, cwd=ROOT, check=True)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        auth = {"Authorization": "Bearer bench-api-key"}
        with httpx.Client(base_url=base, timeout=60, headers=auth) as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            for t in triage_texts[:20]:  # warm-up
                http.post("/v1/triage", json={"text": t})
            lat = []
            for t in triage_texts:
                s = time.perf_counter()
                r = http.post("/v1/triage", json={"text": t})
                lat.append(time.perf_counter() - s)
                r.raise_for_status()
            triage = percentiles(lat)

            start = time.perf_counter()
            for i in range(0, len(enrich_texts), 1000):
                chunk = [
                    {"source": "twitter", "external_id": f"b{i + j}", "body": t}
                    for j, t in enumerate(enrich_texts[i : i + 1000])
                ]
                http.post("/v1/tickets", json=chunk).raise_for_status()
            ingest_s = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)

    from app.core.config import Settings
    from app.core.db import make_engine
    from app.enrich.worker import Worker
    from app.nlp.loader import load_analyzer
    from app.routing.table import RoutingTable

    settings = Settings(_env_file=None, database_url=db_url, data_dir=tmp)
    engine = make_engine(db_url)
    worker = Worker(
        engine=engine,
        analyzer=load_analyzer(settings),
        routing=RoutingTable.load(settings.routing_table),
        batch_size=settings.worker_batch_size,
    )
    start = time.perf_counter()
    done = worker.drain()
    enrich_s = time.perf_counter() - start
    engine.dispose()
    assert done == len(enrich_texts), f"worker finished {done} of {len(enrich_texts)}"
    enrich_rate = done / enrich_s

    print()
    print_table(
        [
            [
                "one text (ms)",
                f"{raw['p50_ms']:.1f} / {raw['p99_ms']:.1f}",
                f"{triage['p50_ms']:.1f} / {triage['p99_ms']:.1f}",
                f"{triage['p50_ms'] / raw['p50_ms']:.2f}x",
            ],
            [
                "texts per second",
                f"{raw['texts_per_s']:.0f}",
                f"{enrich_rate:.0f}",
                f"{enrich_rate / raw['texts_per_s']:.2f}x",
            ],
        ],
        ["measure", "raw encoder (p50 / p99)", "service (p50 / p99)", "service / raw"],
    )
    print()
    print(
        f"triage over HTTP, {len(triage_texts)} texts: p50 {triage['p50_ms']:.1f} ms, "
        f"p99 {triage['p99_ms']:.1f} ms, mean {triage['mean_ms']:.1f} ms"
    )
    print(
        f"ingest: {len(enrich_texts)} tickets in {ingest_s:.2f} s "
        f"({len(enrich_texts) / ingest_s:.0f} tickets/s, batches of 1000)"
    )
    print(
        f"enrichment: {done} tickets analysed and stored in {enrich_s:.1f} s "
        f"= {enrich_rate:.0f} tickets/s (raw encoder alone {raw['texts_per_s']:.0f} texts/s)"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "raw_encoder": raw,
                    "triage": triage,
                    "ingest_tickets_per_s": len(enrich_texts) / ingest_s,
                    "enrich_tickets_per_s": enrich_rate,
                    "database": db_url.split(":")[0],
                    "texts": origin,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
