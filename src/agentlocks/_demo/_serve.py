"""One demo replica: ``python -m agentlocks._demo._serve`` (started by the driver).

It binds a free loopback port itself (no race with another process picking the same one),
prints ``listening <port>`` on stdout for the driver, then serves the app under uvicorn until
SIGTERM. Settings come from the environment (:data:`._settings.ENV`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import uvicorn

from ._app import create_app
from ._settings import AppSettings


def _exit_with_driver() -> None:
    """Stop (as on SIGTERM) once the driver's end of our stdin closes: it exited or died."""
    # os.read, not sys.stdin: a daemon thread blocked inside the buffered reader holds its
    # lock, and the interpreter cannot then shut down cleanly after a failed startup.
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """Serve one replica until SIGTERM (or until the driver goes away)."""
    threading.Thread(target=_exit_with_driver, name="driver-watch", daemon=True).start()
    settings = AppSettings.from_env(os.environ)
    sock = socket.create_server(("127.0.0.1", 0), backlog=512)
    print(f"listening {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
