"""`python -m app`: serve the API (and the in-process worker) on HOST:PORT."""

from __future__ import annotations

import uvicorn

from app.core.config import get_settings


def main() -> None:
    """Run uvicorn with the configured host and port."""
    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
