"""The conformance suite: the guarantees of API.md as tests any backend can run.

A backend proves itself by subclassing :class:`ConformanceSuite` in a pytest module and
providing a ``backend_url`` fixture (the URL its coordinators connect to)::

    # tests/test_etcd_conformance.py
    import pytest
    from agentlocks.testing import ConformanceSuite

    class TestEtcd(ConformanceSuite):
        @pytest.fixture
        def backend_url(self) -> str:
            return "etcd://127.0.0.1:2379"

Needs ``pytest``, ``pytest-asyncio`` and ``hypothesis``. Every coordinator the suite
creates gets a fresh namespace, so no test needs a flushed server, and every test runs
under a deadline so a deadlock fails instead of hanging. Remote backends may override the
hooks of :class:`ConformanceSuite` (``break_lease``) to unlock the lost-lease tests.
"""

from ._closing import ClosingGuarantees as ClosingGuarantees
from ._harness import SuiteHarness as SuiteHarness
from ._locks import LockGuarantees as LockGuarantees
from ._queueing import QueueGuarantees as QueueGuarantees
from ._semaphores import SemaphoreGuarantees as SemaphoreGuarantees
from ._signals import SignalGuarantees as SignalGuarantees
from ._stateful import StatefulSchedules as StatefulSchedules


class ConformanceSuite(
    LockGuarantees,
    QueueGuarantees,
    SemaphoreGuarantees,
    SignalGuarantees,
    ClosingGuarantees,
    StatefulSchedules,
    SuiteHarness,
):
    """Every conformance test; subclass it and provide a ``backend_url`` fixture."""


__all__ = [
    "ClosingGuarantees",
    "ConformanceSuite",
    "LockGuarantees",
    "QueueGuarantees",
    "SemaphoreGuarantees",
    "SignalGuarantees",
    "StatefulSchedules",
    "SuiteHarness",
]
