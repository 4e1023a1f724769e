"""The benches' one way to print a figure beside its reference and target, and keep it.

Each bench script calls ``report`` for every figure; ``RESULTS`` collects them for
``--json``. A figure that misses its target prints MISS; nothing here exits.
"""

from __future__ import annotations

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
