"""The lunch-rush scenario: a whole lunch at one canteen in accelerated time, end to end.

This package owns playing a lunch against a real terminal and judging it. Each
module has one job:

    clock     the simulated clock (the wall clock of the daemon, the county and
              every phone) and the lunch's local times
    plan      the canteen's fixed facts, its place in the agency directory, the
              options of a run, and the seeded plan: who comes when, from which
              agency, how they pay, what goes wrong, and when
    model     the expected-verdict model: what each presentation must get
    canteen   the terminal under test: its settings, provisioning and first
              lists, county IT's update repository, the daemon in a thread and
              a screen client
    lunch     one run: the devices, the outage, the signed publications, each
              presentation paired with its decision; ``play`` runs and judges
    record    the ``RunRecord`` a run produces, the monitor that samples it,
              and the marks that pair a decision with its presentation
    report    the checks, the figures, the printed report and the chart; it
              reads only a record
    counter   the quick run: the plan decided by the terminal's core alone, with
              the directory, no devices (the price tiers in a second or two)

It runs everything on 127.0.0.1 in a folder of its own and stops everything it
started. The names below are what the hw-sim command and the tests use:
``Lunch(Options(out=...)).run()`` gives the record, ``check(record)`` the
failures, and ``play`` does both and writes the report.
"""

from __future__ import annotations

from hwsim.scenario.lunch import Lunch, play
from hwsim.scenario.plan import Options, ScenarioError
from hwsim.scenario.record import RunRecord
from hwsim.scenario.report import check

__all__ = ["Lunch", "Options", "RunRecord", "ScenarioError", "check", "play"]
