"""An ingestion service: per-user FIFO across sources, users in parallel, a cap, 503 when full.

A user's documents arrive from several sources at once (the public API, the SDK, a browser
extension). Ingesting one reads the user's index, embeds the document (slow) and writes the
index back, so two ingestions for one user at the same time would lose a document. Hence:

* ``@coord.serialized("user:{user_id}")``: one ingestion per user at a time, in arrival
  order, whatever the source; different users run in parallel.
* ``@coord.backpressure("ingest", capacity=4, max_waiting=16, timeout=10)``: at most 4
  ingestions run at once across every replica; when 16 already wait (or after 10 s) the
  client gets 503 with ``Retry-After`` at once instead of a hanging request.

Run it::

    python examples/ingestion_service.py                      # http://127.0.0.1:8000
    AGENTLOCKS_URL=redis://localhost:6379/0 python examples/ingestion_service.py --port 8001
    python examples/ingestion_service.py --demo               # serve, send a burst, exit

``--demo`` starts the service on a free loopback port, sends the calls shown in the README
and exits non-zero if a document was lost or the overload was not answered with 503s.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

import agentlocks
from agentlocks.fastapi import install, readiness

EMBED_SECONDS = 0.2  # how long the fake embedding model takes per document


class Document(BaseModel):
    """One document sent by a client."""

    source: Literal["api", "sdk", "extension"]
    text: str


def create_app(url: str | None = None) -> FastAPI:
    """Build the service on the backend at ``url`` ($AGENTLOCKS_URL, else memory://)."""
    coord = agentlocks.connect(url)
    ingest_capacity = coord.backpressure("ingest", capacity=4, max_waiting=16, timeout=10)
    index: dict[str, list[str]] = {}  # user -> documents, in ingestion order

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with coord:  # closes the backend's connections on shutdown
            yield

    app = FastAPI(title="ingestion service", lifespan=lifespan)
    install(app)  # Unavailable -> 503 + Retry-After; departed clients leave the queues
    app.add_api_route("/ready", readiness(coord, ingest_capacity))

    @app.post("/users/{user_id}/documents")
    @coord.serialized("user:{user_id}", timeout=30)  # per user first: see docs/backpressure.md
    @ingest_capacity  # then one global slot
    async def ingest(user_id: str, document: Document) -> dict[str, object]:
        documents = index.get(user_id, [])  # read ...
        await asyncio.sleep(EMBED_SECONDS)  # ... embed ...
        index[user_id] = [*documents, f"{document.source}: {document.text}"]  # ... write back
        return {"user": user_id, "position": len(documents) + 1, "source": document.source}

    @app.get("/users/{user_id}/documents")
    async def documents(user_id: str) -> list[str]:
        return index.get(user_id, [])

    return app


async def demo() -> int:
    """Serve on a free port, show FIFO per user and 503s under overload; 0 if all held."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(), log_level="warning", ws="none", http="h11")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn.Server has no "started" event
        await asyncio.sleep(0.01)
    failures = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        print("1. alice sends from three sources at once (one at a time, in arrival order):")
        sends = [
            client.post("/users/alice/documents", json={"source": source, "text": f"doc {n}"})
            for n, source in enumerate(["api", "sdk", "extension"])
        ]
        for response in await asyncio.gather(*sends):
            print(f"   {response.status_code} {response.json()}")
        stored = (await client.get("/users/alice/documents")).json()
        print(f"   alice's index: {stored}")
        failures += len(stored) != 3  # without the per-user lock: 1 document, 2 lost

        print("2. 30 users at once: 4 run, 16 wait, the rest get 503 at once:")
        burst = [
            client.post(f"/users/user{n}/documents", json={"source": "api", "text": "hi"})
            for n in range(30)
        ]
        responses = await asyncio.gather(*burst)
        codes = [r.status_code for r in responses]
        print(f"   200 x {codes.count(200)}, 503 x {codes.count(503)}")
        rejected = next((r for r in responses if r.status_code == 503), None)
        if rejected is None:
            failures += 1
        else:
            print(f"   Retry-After: {rejected.headers['retry-after']}  body: {rejected.json()}")
        print(f"3. GET /ready -> {(await client.get('/ready')).json()}")
    server.should_exit = True
    await serving
    print("ok" if not failures else "FAILED")
    return 1 if failures else 0


def main() -> None:
    """Command line: serve on --host/--port, or run the --demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--url", default=None, help="backend URL (default: $AGENTLOCKS_URL)")
    parser.add_argument("--demo", action="store_true", help="serve, send a burst, exit")
    args = parser.parse_args()
    if args.demo:
        sys.exit(asyncio.run(demo()))
    uvicorn.run(create_app(args.url), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
