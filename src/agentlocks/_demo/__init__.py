"""``agentlocks demo``: a real FastAPI + LangGraph agent, driven unguarded and guarded.

Needs ``pip install 'agentlocks[demo]'``. The CLI imports this package only when the
``demo`` command runs; :func:`main` takes the arguments after ``demo``.
"""

from __future__ import annotations

from ._main import main as main

__all__ = ["main"]
