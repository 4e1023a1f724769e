"""A cadre's phone: a wallet file that draws token v1 codes with a counter that only goes up.

This module owns the wallet files `hw-sim issuer` writes (wallet.Wallet JSON:
credential, holder key, counter) as a phone owns its app storage: drawing a
code takes the next counter value and writes the wallet back, atomically and
before the code is handed out, under a lock, so two draws never share a
counter and a crash never reuses one. It never reads a clock (the phone's
time is an argument), never decides whether a code is good, and never touches
a terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from hwsim.population import write_text_atomic
from hwsim.wallet import Wallet


class WalletError(Exception):
    """A wallet file that cannot be read or written; the message names it and what to do."""


def load_wallet(path: str | Path) -> Wallet:
    """The wallet in a file written by `hw-sim issuer` (or `save_wallet`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise WalletError(
            f"{path}: cannot read the wallet ({exc.strerror}); "
            "wallets are in the wallets/ folder that hw-sim issuer --out made"
        ) from None
    except UnicodeDecodeError:
        raise WalletError(f"{path}: not a wallet file (not UTF-8 text)") from None
    try:
        return Wallet.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise WalletError(f"{path}: not a wallet file ({exc!r})") from None


def save_wallet(path: str | Path, wallet: Wallet) -> None:
    """Write the wallet (owner-readable only: it holds the holder's private key)."""
    try:
        write_text_atomic(Path(path), wallet.to_json() + "\n", 0o600)
    except OSError as exc:
        raise WalletError(f"{path}: cannot write the wallet back ({exc.strerror})") from None


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    # The file itself is replaced on every draw, so the lock is on its folder.
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise WalletError(
            f"{path.parent}: cannot open the wallet's folder ({exc.strerror})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def draw_code(path: str | Path, now: int) -> tuple[str, Wallet]:
    """Draw the next code from the wallet file at phone time `now` (Unix seconds).

    The counter goes up by one and is saved before the text is returned, as
    a phone must: a code shown with a counter that was then forgotten would
    make the next code a replay.
    """
    wallet_path = Path(path)
    with _folder_lock(wallet_path):
        wallet = load_wallet(wallet_path)
        text = wallet.draw(now)
        save_wallet(wallet_path, wallet)
    return text, wallet
