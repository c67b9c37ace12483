"""The simulated traffic: who sends what, when. The same script drives both runs.

Several users hold a conversation each, in parallel; some of them double-text (send a second
message before the first is answered); meanwhile a burst of new users arrives at once, above
the cluster's run capacity. Timings come from a seeded random generator, so both runs (and
every demo) see the same traffic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Message", "Scenario"]


@dataclass(frozen=True, slots=True)
class Message:
    """One message a simulated user sends.

    Attributes:
        user: Who sends it (``u3``, ``burst-07``).
        turn: Its conversation turn; a double-text shares the turn of the message it follows.
        id: The message id (unique in the run: the driver looks for it in the history).
        at: Seconds to wait before sending it, counted from the previous message of the same
            turn (double-text) or from the end of the user's previous turn.
        double_text: Sent while the previous message is still unanswered.
    """

    user: str
    turn: int
    id: str
    at: float
    double_text: bool = False


@dataclass(frozen=True, slots=True)
class Scenario:
    """The traffic and the app's timings.

    Attributes:
        users: Conversations held in parallel.
        turns: Turns per conversation.
        double_texters: How many of the users double-text (on every other turn).
        burst: One-message users arriving together ``burst_at`` seconds in.
        burst_at: When the burst arrives.
        think: Seconds each scripted model call takes (two per turn).
        tool_delay: Seconds each tool call takes (one per turn).
        capacity: The guarded app's ``max_concurrent_runs``.
        timeout: The guarded app's wait limit before answering 503.
        seed: For the pauses and the double-text gaps.
    """

    users: int
    turns: int
    double_texters: int
    burst: int
    burst_at: float
    think: float
    tool_delay: float
    capacity: int
    timeout: float
    seed: int = 12

    def conversations(self) -> dict[str, list[list[Message]]]:
        """User -> turns -> the messages of that turn (two when double-texting)."""
        rng = random.Random(self.seed)
        out: dict[str, list[list[Message]]] = {}
        for u in range(self.users):
            user = f"u{u + 1}"
            turns = []
            for t in range(self.turns):
                pause = rng.uniform(0.5, 1.5) * self.think
                turn = [Message(user, t, f"{user}-t{t}", 0.0 if t == 0 else pause)]
                if u < self.double_texters and t % 2 == 0:
                    # While the first run is still at work: thinking (the second run then
                    # reads a history without the first's tool call), or calling its tool
                    # (a history whose tool call has no answer yet), or thinking again.
                    gap = rng.uniform(0.2, 2.0) * self.think
                    turn.append(Message(user, t, f"{user}-t{t}-again", gap, double_text=True))
                turns.append(turn)
            out[user] = turns
        return out

    def burst_users(self) -> list[Message]:
        """The burst: one message each, all at ``burst_at``."""
        return [
            Message(f"burst-{b + 1:02d}", 0, f"burst-{b + 1:02d}", 0.0) for b in range(self.burst)
        ]

    @property
    def planned(self) -> int:
        """How many requests the script sends."""
        sent = sum(len(turn) for turns in self.conversations().values() for turn in turns)
        return sent + self.burst


FULL = Scenario(
    users=8,
    turns=5,
    double_texters=5,
    burst=24,
    burst_at=1.5,
    think=0.25,
    tool_delay=0.15,
    capacity=8,
    timeout=1.5,
)
"""The default: about 8 s of traffic per run."""

QUICK = Scenario(
    users=4,
    turns=3,
    double_texters=3,
    burst=12,
    burst_at=0.4,
    think=0.08,
    tool_delay=0.05,
    capacity=4,
    timeout=0.5,
)
"""``--quick``: about 2 s of traffic per run, for tests."""
