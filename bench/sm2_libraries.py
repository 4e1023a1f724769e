"""SM2 libraries side by side: the measurement behind protocol/sm2.py's choice.

    python3 -m venv /tmp/sm2venv
    /tmp/sm2venv/bin/pip install gmalglib gmssl-fast cbor2 base45 cryptography
    PYTHONPATH=. /tmp/sm2venv/bin/python bench/sm2_libraries.py [--seconds 6]

(The project's .venv has none of the candidates; it runs the protocol/sm2.py rows only.)

Each candidate that imports verifies the same 300-byte message under the default ID
(each with a signature it checked first, and ours checked by the others), timed in
alternating batches so that other processes load every candidate alike; the figure is
the median batch, in microseconds of wall clock and of this process's CPU time. Then
`openssl speed -seconds 3 sm2` (OpenSSL's own C loop, which divides by CPU time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import sm2

MESSAGE = bytes(range(256)) + bytes(44)


def candidates() -> dict[str, Callable[[], bool]]:
    key = sm2.Sm2PrivateKey.generate()
    public = key.public_key()
    signature = key.sign(MESSAGE)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    der = sm2._der_signature(r, s)
    out: dict[str, Callable[[], bool]] = {
        "protocol/sm2.py (libcrypto by ctypes, e computed here)": lambda: public.verify(
            signature, MESSAGE
        ),
        "libcrypto EVP_DigestVerify by ctypes (ID set)": lambda: sm2._lib.verify(
            public._pkey, der, MESSAGE, sm2.DEFAULT_ID
        ),
    }
    try:
        from gmalglib.core import SM2 as GmalSM2  # type: ignore[import-not-found]

        verifier = GmalSM2(pk=public.point)  # its default uid is 1234567812345678
        assert verifier.verify(MESSAGE, signature), "gmalglib disagrees with protocol/sm2.py"
        out["gmalglib (C extension)"] = lambda: bool(verifier.verify(MESSAGE, signature))
    except ImportError:
        print("gmalglib: not installed")
    try:
        import gmssl_fast  # type: ignore[import-not-found]

        # gmssl-fast signs and verifies with GmSSL's default ID and takes no other; its
        # own key pair, since it reads keys as hex of its own format.
        fast = gmssl_fast.SM2.generate()
        fast_sig = fast.sign(MESSAGE)
        assert fast.verify(MESSAGE, fast_sig)
        out["gmssl-fast (GmSSL, static)"] = lambda: bool(fast.verify(MESSAGE, fast_sig))
    except ImportError:
        print("gmssl-fast: not installed")
    for name, fn in out.items():
        assert fn(), name
    return out


def alternating(fns: dict[str, Callable[[], bool]], seconds: float, batch: int = 20) -> None:
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(len(v) for v in wall.values()) < 5:
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(batch):
                fn()
            wall[name].append((time.perf_counter() - w0) / batch * 1e6)
            cpu[name].append((time.process_time() - c0) / batch * 1e6)
    for name in fns:
        print(
            f"  {name}: {statistics.median(wall[name]):.0f} us wall, "
            f"{statistics.median(cpu[name]):.0f} us CPU ({len(wall[name])} batches)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f}; one SM2 verify each:")
    alternating(candidates(), a.seconds)
    try:
        out = subprocess.run(
            ["openssl", "speed", "-seconds", "3", "sm2"], capture_output=True, text=True, check=True
        ).stdout
        line = next(x for x in out.splitlines() if "SM2" in x and "bits" in x)
        print(f"  openssl speed -seconds 3 sm2: {1e6 / float(line.split()[-1]):.0f} us CPU")
    except (OSError, subprocess.CalledProcessError, StopIteration):
        print("  openssl speed: not available")
    print(f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
