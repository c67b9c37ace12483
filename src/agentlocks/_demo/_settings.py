"""What one demo server runs: settings handed from the driver to each replica's process.

The driver starts every replica as ``python -m agentlocks._demo._serve`` with one environment
variable, :data:`ENV`, holding these settings as JSON (the coordinator URL may carry a
password: it travels in the child's environment, never on its command line).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ENV", "AppSettings", "Strategy"]

ENV: Final = "AGENTLOCKS_DEMO_APP"

Strategy = Literal["enqueue", "reject", "interrupt"]


@dataclass(frozen=True, slots=True)
class AppSettings:
    """One replica's configuration.

    Attributes:
        guarded: Switch the app's two agentlocks lines on.
        url: The coordinator's backend URL (``memory://``, ``redis://``, ``postgresql://``).
        namespace: The coordinator namespace (one per demo run: runs never share locks).
        saver: ``sqlite:<path>`` for an ``AsyncSqliteSaver`` file, or a PostgreSQL DSN for
            ``AsyncPostgresSaver``; every replica of a run shares it.
        strategy: ``guard_graph``'s ``on_busy``.
        capacity: ``max_concurrent_runs``, cluster-wide.
        timeout: Seconds a run may wait for its thread and a run slot (then 503).
        think: Seconds each scripted model call takes.
        tool_delay: Seconds each tool call takes.
    """

    guarded: bool
    url: str
    namespace: str
    saver: str
    strategy: Strategy
    capacity: int
    timeout: float
    think: float
    tool_delay: float

    def __repr__(self) -> str:
        # The URLs may hold passwords; a repr never shows them.
        return f"AppSettings(guarded={self.guarded}, strategy={self.strategy!r}, ...)"

    def to_env(self) -> dict[str, str]:
        """The environment entry that hands these settings to a server process."""
        return {ENV: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppSettings:
        """Read the settings :meth:`to_env` wrote.

        Raises:
            RuntimeError: The variable is missing (the module was started by hand).
        """
        raw = environ.get(ENV)
        if raw is None:
            raise RuntimeError(f"${ENV} is not set: start the demo with `agentlocks demo`")
        return cls(**json.loads(raw))
