"""`python -m app.worker`: a standalone worker process against the configured database.

Run as many as the cores allow against one PostgreSQL; they share the queue through
FOR UPDATE SKIP LOCKED. SIGTERM/SIGINT finish the current batch, then exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from app.core.config import get_settings
from app.core.logging import configure_logging

log = logging.getLogger("app.worker")


def lower_priority(priority: str) -> None:
    """Run analysis below the API processes on the same cores, so webhooks answer first.

    idle: SCHED_IDLE, the worker gets only CPU time nothing else wants (Linux); nice: niceness
    10; normal: unchanged. Linux's autogroup shares the CPU between sessions before it looks at
    a process's priority, so a worker that leads its own session (a service manager, or a
    script, started it with setsid) also lowers its session's share (/proc/self/autogroup)."""
    if priority == "normal":
        return
    if priority == "idle" and hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif hasattr(os, "nice"):
        os.nice(10)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists() and os.getsid(0) == os.getpid():
        try:
            autogroup.write_text("19")
        except OSError:
            log.info("could not lower the autogroup's share", extra={"stage": "enrich"})


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1, or a message saying so."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the worker loop (or drain once with --once)."""
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__)
    parser.add_argument("--once", action="store_true", help="process what is pending, then exit")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="tickets per batch")
    parser.add_argument(
        "--batch-chars",
        type=positive_int,
        default=None,
        help="characters of text per batch (default WORKER_BATCH_CHARS)",
    )
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    lower_priority(settings.worker_priority)
    # Imported after lowering the priority: loading torch and the models is a few seconds of
    # CPU that must not compete with the API processes either.
    from app.core.db import make_engine
    from app.enrich.worker import Worker
    from app.nlp.loader import load_analyzer
    from app.outbound.service import OutboundSender
    from app.routing.table import RoutingTable

    engine = make_engine(settings.database_url)
    worker = Worker(
        engine=engine,
        analyzer=load_analyzer(settings),
        routing=RoutingTable.load(settings.routing_table),
        batch_size=args.batch_size or settings.worker_batch_size,
        batch_chars=args.batch_chars or settings.worker_batch_chars,
        poll_interval_s=settings.worker_poll_interval_s,
        max_attempts=settings.worker_max_attempts,
        assign_min_cosine=settings.cluster_assign_min_cosine,
        outbound=settings.outbound_config() is not None,
        digest_settings=settings,
    )
    outbound = settings.outbound_config()
    sender = None
    if outbound is not None and not args.once:
        sender = OutboundSender(engine=engine, config=outbound, routing=worker.routing)
        sender.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        if args.once:
            n = worker.drain()
            runs = worker.run_cluster_runs()
            log.info("drained", extra={"stage": "enrich", "tickets": n, "cluster_runs": runs})
        else:
            worker.run()
    finally:
        if sender is not None:
            sender.stop()
        engine.dispose()


if __name__ == "__main__":
    main()
