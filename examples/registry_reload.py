"""A tool registry reloaded while agent runs use it, across replicas.

Agent runs read the tool registry all the time; an operator occasionally replaces it (new
tools, changed schemas). The registry lives in a shared store (a database or object store;
here a dict) as two parts that must match: each tool and its JSON schema. A writer replaces
them one after the other, so a reader that looks in between sees a torn registry: a tool
without its schema, or the old schema of a new tool.

``coord.registry("tool-registry")`` fixes both halves of the problem:

* runs read under ``tools.read()`` (shared: runs never wait for each other), the reload
  writes under ``tools.write()`` (exclusive, FIFO: a writer is never starved by readers);
* the write publishes a new generation; every replica compares ``await tools.version()``
  (one round trip) with the generation it loaded, and reloads its local copy when stale.

Run it::

    python examples/registry_reload.py                          # memory://, 3 replicas
    python examples/registry_reload.py --url redis://localhost:6379/0
    python examples/registry_reload.py --url postgresql://app@db/app --replicas 4

Each replica has its own coordinator (its own connections) on the URL; on ``memory://``
they share one coordinator, since in-process locks cannot span coordinators. The script
first replaces the registry without the lock (torn reads appear), then with it, and exits
0 only if the guarded run had no torn read, readers really shared the lock, and every
replica reloaded the new generation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass, field

import agentlocks

#: The shared store the registry lives in: tool name -> description, and -> JSON schema.
Store = dict[str, dict[str, str]]


def tools_of(generation: int) -> dict[str, str]:
    """The tools published at ``generation`` (each generation renames every tool)."""
    return {f"tool{i}-g{generation}": f"tool {i}, generation {generation}" for i in range(5)}


async def replace_registry(store: Store, generation: int) -> None:
    """Write a new registry in two steps, as a store without multi-key transactions must."""
    tools = tools_of(generation)
    store["tools"] = dict(tools)
    await asyncio.sleep(0.02)  # the second write is a round trip later
    store["schemas"] = {name: f'{{"title": "{name}"}}' for name in tools}


def torn(store: Store) -> bool:
    """True if the tools and the schemas in the store do not match."""
    return set(store["tools"]) != set(store["schemas"])


@dataclass
class Replica:
    """One service replica: its coordinator and its local copy of the registry."""

    name: str
    coord: agentlocks.Coordinator
    loaded: int = 0
    tools: dict[str, str] = field(default_factory=dict)
    reloads: int = 0

    async def refresh(self, store: Store) -> None:
        """Reload the local copy if another replica published a newer generation."""
        registry = self.coord.registry("tool-registry")
        if await registry.version() != self.loaded:
            async with registry.read() as version:
                self.tools, self.loaded = dict(store["tools"]), version
                self.reloads += 1


@dataclass
class Tally:
    """What the readers saw."""

    reads: int = 0
    torn: int = 0
    concurrent: int = 0  # readers inside the registry at once, right now
    max_concurrent: int = 0


async def reader(
    replica: Replica, store: Store, tally: Tally, guarded: bool, stop: asyncio.Event
) -> None:
    """An agent run: look the tools up again and again, as runs do."""
    registry = replica.coord.registry("tool-registry")
    while not stop.is_set():
        if guarded:
            async with registry.read():
                tally.concurrent += 1
                tally.max_concurrent = max(tally.max_concurrent, tally.concurrent)
                await asyncio.sleep(0.005)  # the run uses the tools for a while
                tally.torn += torn(store)
                tally.concurrent -= 1
        else:
            await asyncio.sleep(0.005)
            tally.torn += torn(store)
        tally.reads += 1
        await replica.refresh(store)


async def run(url: str, replicas: int, guarded: bool) -> tuple[Tally, list[Replica]]:
    """One round: replicas read while replica 0 replaces the registry three times."""
    namespace = f"registry-example-{uuid.uuid4().hex[:8]}"
    shared = url.startswith("memory:")
    first = agentlocks.connect(url, namespace=namespace)
    coords = [first if shared or i == 0 else agentlocks.connect(url, namespace=namespace)
              for i in range(replicas)]  # fmt: skip
    store: Store = {"tools": tools_of(0), "schemas": dict.fromkeys(tools_of(0), "{}")}
    fleet = [Replica(f"replica-{i}", c) for i, c in enumerate(coords)]
    tally, stop = Tally(), asyncio.Event()
    try:
        readers = [
            asyncio.create_task(reader(r, store, tally, guarded, stop))
            for r in fleet
            for _ in range(4)  # four runs per replica
        ]
        writer = fleet[0].coord.registry("tool-registry")
        for generation in (1, 2, 3):
            await asyncio.sleep(0.1)
            if guarded:
                async with writer.write() as version:
                    await replace_registry(store, version)
            else:
                await replace_registry(store, generation)  # readers may see it half-done
                async with writer.write():  # only to publish the new generation
                    pass
        await asyncio.sleep(0.1)  # let every replica notice the last generation
        stop.set()
        await asyncio.gather(*readers)
    finally:
        for coord in dict.fromkeys(coords):
            await coord.aclose()
    return tally, fleet


async def main(argv: list[str] | None = None) -> int:
    """Run unguarded, then guarded; print what happened; exit 0 if the guarded run was clean."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="memory://", help="backend URL (default memory://)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas (default 3)")
    args = parser.parse_args(argv)
    if args.url.startswith("memory:"):
        print(
            "memory://: the replicas share one coordinator (in-process locks cannot span processes)"
        )
    ok = True
    for guarded in (False, True):
        tally, fleet = await run(args.url, args.replicas, guarded)
        label = "guarded  " if guarded else "unguarded"
        generations = sorted({r.loaded for r in fleet})
        sharing = f", up to {tally.max_concurrent} readers at once" if guarded else ""
        print(
            f"{label}: {tally.reads} reads, {tally.torn} torn{sharing}; replicas at "
            f"generation {generations}, {sum(r.reloads for r in fleet)} reloads"
        )
        if guarded:
            ok = tally.torn == 0 and tally.max_concurrent > 1 and generations == [3]
    print("verdict:", "no torn read, readers shared, every replica reloaded" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
