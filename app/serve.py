"""Serving the API from several processes, each with its own SO_REUSEPORT socket.

uvicorn's `--workers` shares one listening socket: the busiest process's event loop accepts most
new connections (a helpdesk's pooled keep-alive connections all land on one process while the
other idles), and that socket leaves TCP_NODELAY off (uvicorn issue #3149: +40 ms per keep-alive
response). Here every process binds its own socket with SO_REUSEPORT, so the kernel spreads
connections evenly, and names IPPROTO_TCP, so asyncio sets TCP_NODELAY. A process that dies is
started again; SIGTERM/SIGINT stop them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from typing import Any

import uvicorn

log = logging.getLogger("app.serve")


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket whose accepted connections get TCP_NODELAY."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _child(options: dict[str, Any]) -> None:
    config = uvicorn.Config("app.main:app", **options)
    sock = bind_tcp(config.host, config.port, reuse_port=True)
    uvicorn.Server(config).run(sockets=[sock])


def serve(options: dict[str, Any], processes: int) -> None:
    """Run `processes` API processes on HOST:PORT until SIGTERM/SIGINT."""
    if processes <= 1:
        config = uvicorn.Config("app.main:app", **options)
        uvicorn.Server(config).run(sockets=[bind_tcp(config.host, config.port)])
        return
    # Fail here, in the parent, if the port is taken, rather than in every child.
    probe = bind_tcp(options["host"], options["port"], reuse_port=True)
    probe.close()
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    procs: list[multiprocessing.process.BaseProcess] = []

    def start() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_child, args=(options,), name="api", daemon=False)
        proc.start()
        return proc

    def stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [start() for _ in range(processes)]
    log.info("api processes started", extra={"stage": "serve", "pids": [p.pid for p in procs]})
    while not stopping.wait(0.5):
        for i, proc in enumerate(procs):
            if not proc.is_alive():
                log.warning(
                    "api process exited; starting another",
                    extra={"stage": "serve", "pid": proc.pid, "exitcode": proc.exitcode},
                )
                procs[i] = start()
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            proc.terminate()
    for proc in procs:
        proc.join(timeout=30)
