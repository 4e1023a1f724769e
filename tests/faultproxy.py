"""The fault-injecting proxy and 500-answering ASGI wrapper, for the sync tests.

They live in hw-sim now (hwsim/county.py, behind ``hw-sim county``), so that a
technician can use the same faults; this module keeps the tests' import name.
"""

from __future__ import annotations

from hwsim.county import (
    BLACKHOLE,
    CUT_AFTER,
    CUT_BEFORE,
    FAIL_AFTER,
    FAIL_BEFORE,
    LATENCY,
    PASS,
    REFUSE,
    STALL,
    TRICKLE,
    ASGIApp,
    Fault,
    FaultProxy,
    Message,
    Plan,
    Scope,
    ServerFaults,
    random_plan,
    random_server_plan,
)

__all__ = [
    "BLACKHOLE",
    "CUT_AFTER",
    "CUT_BEFORE",
    "FAIL_AFTER",
    "FAIL_BEFORE",
    "LATENCY",
    "PASS",
    "REFUSE",
    "STALL",
    "TRICKLE",
    "ASGIApp",
    "Fault",
    "FaultProxy",
    "Message",
    "Plan",
    "Scope",
    "ServerFaults",
    "random_plan",
    "random_server_plan",
]
