"""The benches' one way to print a figure beside its reference and target, and keep it.

Each bench script calls ``report`` for every figure; ``RESULTS`` collects them for
``--json``. A figure that misses its target prints MISS; nothing here exits.
"""

from __future__ import annotations

import json
from typing import Any

RESULTS: list[dict[str, Any]] = []


def report(
    name: str,
    value: float,
    unit: str,
    reference: str,
    target: str,
    ok: bool,
    digits: int = 3,
) -> None:
    RESULTS.append(
        {
            "name": name,
            "value": round(value, 3),
            "unit": unit,
            "reference": reference,
            "target": target,
            "pass": ok,
        }
    )
    mark = "PASS" if ok else "MISS"
    print(
        f"[{mark}] {name}: {value:,.{digits}f} {unit}  (reference: {reference}; target: {target})",
        flush=True,
    )


def finish(json_file: str | None) -> None:
    """A bench's last lines: the figures written to ``json_file`` (when given), then one
    line naming every figure that missed its target, or saying none did."""
    if json_file:
        with open(json_file, "w", encoding="utf-8") as out:
            json.dump(RESULTS, out, indent=1)
    missed = [r["name"] for r in RESULTS if not r["pass"]]
    print(f"missed: {'; '.join(missed)}" if missed else "every target met", flush=True)
