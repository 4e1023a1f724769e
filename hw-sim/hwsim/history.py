"""``hw-sim county history``: two years of a county, with planted batches and anomalies.

This module owns generating a county's past for the console and its finders to be
tested and benched on: an agency directory at four levels, canteens run by agencies,
terminals registered with the county (a ledger key pinned for each), cadres, and
months of daily meals written as real ledger entries (hash-chained per terminal as a
terminal writes them, protocol/chain.py) into either backend (``--data DIR`` for
SQLite, ``--database URL`` for PostgreSQL). The same ``--seed`` gives the same rows
and the same manifest.

What is planted, and only that. Reception batches (at least ``min_people`` cadres
of one visiting agency, not the canteen's operator, at one canteen within
``window_min`` minutes) occur only where planted; ordinary visitors are spaced so
that no batch forms by chance. No cadre eats at two canteens on one local day
unless planted (``multi_canteen_day``); no accepted sale falls outside every meal
window of terminal/defaults.toml unless planted (``off_hours``); no sale falls on a
public holiday unless planted (``holiday``). Repeated batches (``repeat_batches``:
the same agency at the same canteen, 3 within a month) are made of planted batches,
and each of them is also listed in ``batches``.

The manifest (``--manifest FILE``), JSON, exactly what was planted::

    {"seed": int, "months": int, "start": "YYYY-MM-DD", "timezone": "Asia/Shanghai",
     "min_people": 4, "window_min": 15,
     "batches": [{"canteen": str, "unit": str, "start_ms": int, "end_ms": int,
                  "people": int, "cadres": [str, ...]}],
     "anomalies": [
        {"kind": "repeat_batches", "canteen": str, "unit": str, "starts_ms": [int, ...]},
        {"kind": "multi_canteen_day", "cadre": str, "day": "YYYY-MM-DD",
         "canteens": [str, ...]},
        {"kind": "off_hours", "terminal": str, "seq": int, "cadre": str},
        {"kind": "holiday", "terminal": str, "seq": int, "cadre": str,
         "day": "YYYY-MM-DD"}],
     "holidays": ["YYYY-MM-DD", ...]}

Meanings. ``canteen`` is the canteen id (entries.canteen), ``unit`` the agency id
the sale was charged to (entries.unit), ``cadres`` the entries' cadre ids, sorted.
A batch's ``start_ms``/``end_ms`` are the signed times (entries.at_ms) of its first
and last accepted sale; ``people`` is the number of distinct cadres (= len(cadres)).
``starts_ms`` of a repeat are the ``start_ms`` of its batches, in order. ``day`` is
the local date (Asia/Shanghai). ``terminal``/``seq`` name one accepted sale entry.
Only accepted sales (kind 'sale', verdict 'accept') count for every kind; refused
sales are never part of a batch or an anomaly. ``holidays`` are the public holidays
of the generated period; they are also written, one date a line, to
``holidays.txt`` in the county data dir (with ``--data``) and wherever
``--holidays FILE`` says.
"""

from __future__ import annotations
