"""`python -m app`: serve the API (and the in-process worker) on HOST:PORT.

With API_PROCESSES above 1 (or --processes N), N processes serve the port (app/serve.py); the
worker then runs as separate `python -m app.worker` processes (WORKER_IN_PROCESS=false).
"""

from __future__ import annotations

import argparse

from app.core.config import get_settings
from app.serve import serve


def main(argv: list[str] | None = None) -> None:
    """Print the development API key when one is in use, then serve."""
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--processes", type=int, default=None, help="API processes (default 1)")
    args = parser.parse_args(argv)
    settings = get_settings()
    processes = args.processes or settings.api_processes
    if not settings.api_keys.strip():
        key = settings.resolved_api_keys()[0]
        print(
            f"Development API key (kept in {settings.api_key_file}): {key}\n"
            f"  curl -H 'Authorization: Bearer {key}' http://{settings.host}:{settings.port}"
            "/v1/tickets",
            flush=True,
        )
    if processes > 1 and settings.worker_in_process:
        print(
            "API_PROCESSES > 1 with the in-process worker: every API process analyses too. "
            "Set WORKER_IN_PROCESS=false and run `python -m app.worker` instead.",
            flush=True,
        )
    serve(
        {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level.lower(),
            "access_log": False,
        },
        processes,
    )


if __name__ == "__main__":
    main()
