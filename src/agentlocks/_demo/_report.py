"""What a run kept and how it served: the numbers of the result table, and the verdict."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._load import Outcome, Thread

__all__ = ["COLUMNS", "LEGEND", "Result", "verdict"]


@dataclass(frozen=True, slots=True)
class Result:
    """One run (unguarded or guarded) in numbers.

    Attributes:
        label: ``unguarded`` or ``guarded``.
        expected: Messages the users were told the conversations hold (their own messages
            and the answers they received).
        kept: How many of those the checkpoints still hold at the end.
        dangling: Tool calls left without an answer in the final histories (such a thread
            is wedged: the next model call fails).
        conflicts: 409 answers (thread busy, ``--strategy reject``).
        unavailable: 503 answers (over capacity: ``Retry-After``, try again).
        failed: Errors: 5xx other than 503, error lines, cut streams.
        interrupted: Runs a newer message stopped at a step boundary (``interrupt``).
        p50, p99: Latency of the answered requests, in seconds.
        throughput: Answered requests per second of the run.
        sent: Requests sent.
        corrupted: Failures that are LangGraph's ``INVALID_CHAT_HISTORY``: the run read a
            history holding another run's unanswered tool call.
        failures: A few details of the other failures.
    """

    label: str
    expected: int
    kept: int
    dangling: int
    conflicts: int
    unavailable: int
    failed: int
    interrupted: int
    p50: float
    p99: float
    throughput: float
    sent: int
    corrupted: int = 0
    failures: tuple[str, ...] = ()

    @property
    def lost(self) -> int:
        """Messages the users were promised that the conversations no longer hold."""
        return self.expected - self.kept

    @property
    def clean(self) -> bool:
        """Nothing lost, no wedged thread, no error: what the guarded run must show."""
        return self.lost == 0 and self.dangling == 0 and self.failed == 0

    def row(self) -> list[str]:
        """The table cells, in :data:`COLUMNS` order."""
        return [
            self.label,
            str(self.expected),
            str(self.kept),
            str(self.lost),
            str(self.dangling),
            str(self.conflicts),
            str(self.unavailable),
            str(self.failed),
            f"{self.p50 * 1000:.0f} ms",
            f"{self.p99 * 1000:.0f} ms",
            f"{self.throughput:.1f}/s",
        ]

    @classmethod
    def of(
        cls,
        label: str,
        outcomes: Sequence[Outcome],
        threads: Mapping[str, Thread],
        seconds: float,
    ) -> Result:
        """Tally ``outcomes`` against what ``threads`` hold at the end."""
        kinds = Counter(o.kind for o in outcomes)
        expected = kept = 0
        for outcome in outcomes:
            held = threads[outcome.thread].message_ids
            expected += len(outcome.promised)
            kept += sum(1 for m in outcome.promised if m in held)
        failed = [o.detail for o in outcomes if o.kind == "failed"]
        corrupted = [d for d in failed if _is_corrupted(d)]
        others = {_first_line(d) for d in failed if not _is_corrupted(d)}
        answered = sorted(o.latency for o in outcomes if o.kind in ("ok", "interrupted"))
        return cls(
            label=label,
            expected=expected,
            kept=kept,
            dangling=sum(t.dangling for t in threads.values()),
            conflicts=kinds["409"],
            unavailable=kinds["503"],
            failed=kinds["failed"],
            interrupted=kinds["interrupted"],
            p50=_quantile(answered, 0.50),
            p99=_quantile(answered, 0.99),
            throughput=len(answered) / seconds if seconds > 0 else 0.0,
            sent=len(outcomes),
            corrupted=len(corrupted),
            failures=tuple(sorted(others))[:3],
        )


COLUMNS = (
    "run",
    "expected",
    "kept",
    "lost",
    "dangling",
    "409",
    "503",
    "failed",
    "p50",
    "p99",
    "throughput",
)
"""Result table headers: messages expected / kept / lost, dangling tool calls, answers."""

LEGEND = (
    "expected: the users' messages and the answers they received; kept: of those, still in "
    "the conversation's checkpoint at the end; dangling: tool calls left without an answer "
    "(the thread is wedged); 409: thread busy; 503: over capacity, retry later; failed: "
    "errors (a run crashed on a corrupted history, a cut stream); p50/p99: latency of the "
    "answered requests; throughput: answered requests per second"
)
"""What the columns mean, printed under the table."""


def _is_corrupted(detail: str) -> bool:
    return "INVALID_CHAT_HISTORY" in detail


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no detail)"


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def verdict(unguarded: Result | None, guarded: Result | None, *, shared_memory: bool) -> str:
    """The one-line verdict under the table."""
    if guarded is None:
        assert unguarded is not None
        return f"unguarded: {_damage(unguarded)}"
    if not guarded.clean:
        why = (
            "memory:// locks live inside one process and cannot protect several replicas; "
            "run with --url redis://... or --url postgresql://..."
            if shared_memory
            else "this is a bug: please report it"
        )
        return f"guarded run NOT clean: {_damage(guarded)}. {why}"
    served = f"lost nothing ({guarded.kept} of {guarded.expected} messages kept)"
    refusals = []
    if guarded.conflicts:
        refusals.append(f"409 to {guarded.conflicts} double-texts")
    if guarded.unavailable:
        refusals.append(f"503 to {guarded.unavailable} requests above capacity")
    if refusals:
        served += ", answering " + " and ".join(refusals)
    if guarded.interrupted:
        served += f"; {guarded.interrupted} runs were interrupted by a newer message"
    if unguarded is None:
        return f"guarded by agentlocks: {served}"
    return f"unguarded: {_damage(unguarded)}; guarded by agentlocks: {served}"


def _damage(result: Result) -> str:
    parts = [f"lost {result.lost} of {result.expected} messages"]
    if result.dangling:
        parts.append(f"{result.dangling} dangling tool calls")
    if result.failed:
        parts.append(f"{result.failed} failed requests")
    return ", ".join(parts)
