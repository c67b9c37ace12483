"""LangGraph's own checkpointer conformance suite: wrapped, the saver passes what it passed raw."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.memory import InMemorySaver

import agentlocks
from agentlocks.langgraph._checkpointer import guard_checkpointer
from tests.conftest import backend_url_for
from tests.langgraph.checkpointer.conftest import COORDINATORS

Outcome = tuple[frozenset[str], frozenset[str], frozenset[str]]
"""(detected capabilities, tests passed, tests failed)"""

SaverFactory = Callable[[], AsyncIterator[BaseCheckpointSaver[Any]]]


async def _run(name: str, factory: SaverFactory, lifespan: Any = None) -> Outcome:
    results: list[tuple[str, bool]] = []
    progress = ProgressCallbacks(
        on_test_result=lambda cap, test, ok, _err: results.append((f"{cap}:{test}", ok))
    )
    registered = checkpointer_test(name=f"{name}-{uuid.uuid4().hex[:8]}", lifespan=lifespan)(
        factory
    )
    report = await validate(registered, progress=progress)
    detected = frozenset(cap for cap, result in report.results.items() if result.detected)
    passed = frozenset(test for test, ok in results if ok)
    failed = frozenset(test for test, ok in results if not ok)
    return detected, passed, failed


def _postgres_saver_factory() -> tuple[SaverFactory, Any]:
    """AsyncPostgresSaver factories in a schema of their own (dropped after the run)."""
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    url = backend_url_for("postgresql")
    schema = f"conf_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in url else "?"
    scoped = f"{url}{sep}options={quote(f'-csearch_path={schema}')}"

    async def lifespan() -> AsyncIterator[None]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    async def factory() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        async with AsyncPostgresSaver.from_conn_string(scoped) as saver:
            await saver.setup()
            yield saver

    return factory, lifespan


SAVERS = [
    pytest.param("memory", id="InMemorySaver"),
    pytest.param("postgres", id="AsyncPostgresSaver", marks=pytest.mark.postgres),
]


#: The issue asks for the coordinator on memory:// and on PostgreSQL.
COORDS = [p for p in COORDINATORS if p.id != "coord-redis"]


@pytest.mark.parametrize("coord_url", COORDS, indirect=True)
@pytest.mark.parametrize("saver_kind", SAVERS)
async def test_conformance_suite_wrapped_equals_raw(coord_url: str, saver_kind: str) -> None:
    """Same capabilities detected and the same conformance tests pass, raw and wrapped."""
    if saver_kind == "memory":

        async def raw() -> AsyncIterator[BaseCheckpointSaver[Any]]:
            yield InMemorySaver()

        lifespan = None
    else:
        raw, lifespan = _postgres_saver_factory()

    async with agentlocks.connect(coord_url, namespace=f"conf-{uuid.uuid4().hex[:8]}") as coord:

        async def wrapped() -> AsyncIterator[BaseCheckpointSaver[Any]]:
            async for saver in raw():
                yield guard_checkpointer(saver, coord)

        raw_outcome = await _run("raw", raw, lifespan)
        wrapped_outcome = await _run("wrapped", wrapped, lifespan)
    detected, passed, _ = raw_outcome
    assert passed, "the raw saver passed nothing: the suite did not run"
    assert wrapped_outcome[0] == detected
    assert wrapped_outcome[1] >= passed, sorted(passed - wrapped_outcome[1])
    assert wrapped_outcome == raw_outcome
