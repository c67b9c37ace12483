"""Two replicas of one FastAPI service on Redis, started and driven by one command.

The service keeps each user's notes in Redis (the application's own data) and appends a
note with a read-modify-write: read the list, "embed" the note (slow), write the list back.
Two replicas behind a load balancer serve the same users, so an in-process lock cannot
help: two requests of one user on two replicas interleave and one note is lost. The fix is
two decorators on Redis, shared by every replica:

* ``@coord.serialized("user:{user}")``: one append per user at a time, cluster-wide, FIFO;
* ``@coord.backpressure("embed", capacity=2, ...)``: at most two embeddings at once across
  both replicas (the embedding service's quota), 503 with ``Retry-After`` beyond the queue.

Run it (needs ``redis-server`` on PATH, or an existing server with ``--url``)::

    python examples/two_replicas.py
    python examples/two_replicas.py --url redis://localhost:6379/0

It starts a throwaway ``redis-server`` (unless ``--url``), then twice starts two uvicorn
replicas on free loopback ports, sends 3 users x 10 notes at once, round-robin over the
replicas, and reads back what was kept: first unguarded, then guarded. It exits 0 only if
the guarded run kept every note and never ran more than two embeddings at once. (Notes sent
at the same moment are kept in the order they reached Redis, which two replicas may
reorder: FIFO is by arrival at the backend.)
(``serve`` is the subcommand each replica process runs.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

SCRIPT = os.path.abspath(__file__)
USERS, NOTES, CAPACITY = 3, 10, 2
EMBED_SECONDS = 0.05


# -- the service (one replica) ------------------------------------------------------------------


def create_app(url: str, namespace: str, guarded: bool) -> Any:
    """The notes service; ``guarded`` switches its two agentlocks lines on."""
    import redis.asyncio as aioredis
    from fastapi import FastAPI

    import agentlocks
    from agentlocks.fastapi import install

    coord = agentlocks.connect(url, namespace=namespace)
    data = aioredis.Redis.from_url(url)  # the application's own data lives in Redis too
    prefix = f"{namespace}:app"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with coord:
            yield
        await data.aclose()

    app = FastAPI(lifespan=lifespan)
    install(app)  # Unavailable -> 503 with Retry-After

    async def embed(text: str) -> None:
        running = await data.incr(f"{prefix}:running")
        await data.zadd(f"{prefix}:peak", {"peak": running}, gt=True)  # highest seen
        try:
            await asyncio.sleep(EMBED_SECONDS)
        finally:
            await data.decr(f"{prefix}:running")

    async def append(user: str, note: str) -> None:
        key = f"{prefix}:notes:{user}"
        notes = json.loads(await data.get(key) or "[]")  # read ...
        await embed(note)  # ... slow work ...
        await data.set(key, json.dumps([*notes, note]))  # ... write back

    if guarded:
        append = coord.serialized("user:{user}")(append)  # one append per user, FIFO
        embed = coord.backpressure("embed", capacity=CAPACITY, max_waiting=32, timeout=10)(embed)

    @app.post("/users/{user}/notes")
    async def add_note(user: str, note: str) -> dict[str, str]:
        await append(user, note)
        return {"kept": note}

    @app.get("/users/{user}/notes")
    async def get_notes(user: str) -> list[str]:
        notes: list[str] = json.loads(await data.get(f"{prefix}:notes:{user}") or "[]")
        return notes

    @app.get("/peak")
    async def peak() -> dict[str, int]:
        return {"peak": int(await data.zscore(f"{prefix}:peak", "peak") or 0)}

    return app


def serve(args: argparse.Namespace) -> int:
    """Run one replica under uvicorn until terminated."""
    import uvicorn

    app = create_app(args.url, args.namespace, not args.unguarded)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


# -- the driver (one command) -------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_redis(binary: str) -> Iterator[str]:
    """Start a redis-server with no persistence on a free port; stop it on exit."""
    port, workdir = free_port(), tempfile.mkdtemp(prefix="two-replicas-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def replicas(url: str, namespace: str, guarded: bool, count: int) -> AsyncIterator[list[str]]:
    """Start ``count`` replica processes; yield their base URLs once all answer."""
    ports = [free_port() for _ in range(count)]
    command = [SCRIPT, "serve", "--url", url, "--namespace", namespace,
               *([] if guarded else ["--unguarded"])]  # fmt: skip
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, *command, "--port", str(p))
        for p in ports
    ]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        async with httpx.AsyncClient() as client:
            for base, proc in zip(bases, procs, strict=True):
                deadline = time.monotonic() + 30
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(base + "/peak")).status_code == 200:
                            break
                    if proc.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"replica {base} did not start")
                    await asyncio.sleep(0.1)
        yield bases
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 15)


async def send(client: httpx.AsyncClient, base: str, user: str, note: str) -> int:
    """POST one note, retrying after a 503 as its Retry-After says; return the 503 count."""
    refused = 0
    while True:
        reply = await client.post(f"{base}/users/{user}/notes", params={"note": note})
        if reply.status_code != 503:
            reply.raise_for_status()
            return refused
        refused += 1
        await asyncio.sleep(min(float(reply.headers.get("retry-after", "0.1")), 0.5))


async def round_trip(url: str, guarded: bool, count: int) -> dict[str, Any]:
    """One run: start the replicas, send every note at once, read back what was kept."""
    namespace = f"two-replicas-{uuid.uuid4().hex[:8]}"
    async with (
        replicas(url, namespace, guarded, count) as bases,
        httpx.AsyncClient(timeout=60) as client,
    ):
        started = time.monotonic()
        jobs = []
        for i in range(NOTES):  # every note at once; one user's notes alternate replicas
            for u in range(USERS):
                base = bases[(i + u) % len(bases)]
                jobs.append(asyncio.create_task(send(client, base, f"user{u}", f"note{i}")))
        refused = sum(await asyncio.gather(*jobs))
        elapsed = time.monotonic() - started
        kept = {f"user{u}": (await client.get(f"{bases[0]}/users/user{u}/notes")).json()
                for u in range(USERS)}  # fmt: skip
        peak = (await client.get(f"{bases[0]}/peak")).json()["peak"]
    expected = {f"note{i}" for i in range(NOTES)}
    return {
        "kept": sum(len(set(notes) & expected) for notes in kept.values()),
        "peak": peak,
        "refused": refused,
        "seconds": elapsed,
    }


async def drive(args: argparse.Namespace) -> int:
    """Both runs on the server at ``url``; print the table and the verdict."""
    results = {}
    for guarded in (False, True):
        results[guarded] = await round_trip(args.url, guarded, args.replicas)
    print(f"{args.replicas} replicas on {args.url}, {USERS} users x {NOTES} notes sent at once")
    print(f"{'':10} {'notes kept':>12} {'peak embeds':>12} {'503s':>5} {'time':>6}")
    for guarded, r in results.items():
        label = "guarded" if guarded else "unguarded"
        print(
            f"{label:10} {r['kept']:>5} of {USERS * NOTES:<5} "
            f"{r['peak']:>12} {r['refused']:>5} {r['seconds']:>5.1f}s"
        )
    good = results[True]
    ok = good["kept"] == USERS * NOTES and good["peak"] <= CAPACITY
    print(
        "verdict: "
        + (
            f"guarded, every note kept and at most {CAPACITY} embeddings at once"
            if ok
            else "FAILED: the guarded run lost notes or exceeded the cap"
        )
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line: drive both runs (default), or ``serve`` one replica."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    replica = commands.add_parser("serve", help="run one replica (the driver starts them)")
    replica.add_argument("--url", required=True)
    replica.add_argument("--namespace", required=True)
    replica.add_argument("--port", type=int, required=True)
    replica.add_argument("--unguarded", action="store_true")
    parser.add_argument("--url", help="an existing Redis (default: start a throwaway one)")
    parser.add_argument("--replicas", type=int, default=2, help="replica processes (default 2)")
    parser.add_argument("--redis-server", default="redis-server", help="binary to start")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.url:
        return asyncio.run(drive(args))
    binary = shutil.which(args.redis_server)
    if binary is None:
        print(f"{args.redis_server} not found: install Redis or pass --url", file=sys.stderr)
        return 1
    with throwaway_redis(binary) as url:
        args.url = url
        return asyncio.run(drive(args))


if __name__ == "__main__":
    sys.exit(main())
