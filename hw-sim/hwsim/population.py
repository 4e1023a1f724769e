"""A simulated issuer and its cadres: keys, credentials, wallets, cards, and the list files.

This module owns `hw-sim issuer`'s output: issuer keys from a seed, cadres with
units and Chinese display names, one phone wallet per cadre (credential plus
holder key), canteen cards with canonical UIDs for a fraction of them, and the
files a terminal or a county server loads: the trust list and an empty
revocation list (docs/token-format.md §5), the roster CSV
(uid,iss,sub,unit,display_name,status) and a summary. Issuer keys and phone keys
are Ed25519 or SM2 (token.md §7) in any mix (``alg``, ``sm2_share``). The same
seed and issue time give the same keys and files, byte for byte, except the
signatures an SM2 key made (each SM2 signature takes a fresh nonce): a wallet
with an SM2-signed credential verifies the same but is not the same bytes. It
writes only inside the output folder it is given, never reads a clock (the
caller passes the issue time), and never talks to a terminal: loading the lists
is the terminal's or the county's job.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwsim.wallet import (
    DAY_S,
    ED25519,
    SM2,
    Issuer,
    Wallet,
    key_from_private_bytes,
    make_wallet,
    private_bytes,
    signing_key_from_seed,
)

DEFAULT_ISS = "hn-sim"
# Agency codes a canteen's settings name in [canteen] units; Chenzhou-style bureaus.
DEFAULT_UNITS = (
    "cz-finance",
    "cz-education",
    "cz-health",
    "cz-transport",
    "cz-water",
    "cz-agriculture",
    "cz-civil-affairs",
    "cz-natural-resources",
)
# Card technologies and the canonical UID length each gives (docs/devices.md).
CARD_TYPES = {"rdm6300": 5, "mifare4": 4, "mifare7": 7}
CARD_TYPE_CHOICES = (*CARD_TYPES, "mixed")

# --alg of hw-sim issuer: every key Ed25519, every key SM2, or issuer keys in turn Ed25519
# and SM2 with half the phones SM2 (sm2_share changes the phones' share in every case).
ALG_CHOICES = ("ed25519", "sm2", "mixed")
_ALG_NAMES = {"ed25519": ED25519, "sm2": SM2}
_DEFAULT_SM2_SHARE = {"ed25519": 0.0, "sm2": 1.0, "mixed": 0.5}

TRUST_FILE = "trust.json"
REVOKED_FILE = "revoked.json"
ROSTER_FILE = "roster.csv"
SUMMARY_FILE = "population.json"
ISSUER_KEYS_FILE = "issuer-keys.json"
WALLETS_DIR = "wallets"

_SUB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Common surnames and given-name characters: names look like a real agency's staff list.
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛段雷侯龙史陶黎贺顾毛郝龚"
)
_GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文辉力永健世广海云春"
    "晓雪梅琳丹宇浩鹏飞斌俊峰波宁欣怡佳婷雨晨思源博文轩泽瑞嘉成"
)


class PopulationError(Exception):
    """Bad population options or an unreadable population folder; the message says which."""


@dataclass
class Cadre:
    """One cadre of the simulated issuer: the phone wallet, and a card if they have one."""

    wallet: Wallet
    card_uid: bytes | None = None  # canonical UID bytes (docs/devices.md)
    card_status: str = "active"  # active, lost or blocked (the roster's words)

    @property
    def sub(self) -> str:
        return self.wallet.sub

    @property
    def unit(self) -> str:
        return self.wallet.unit

    @property
    def display_name(self) -> str:
        return self.wallet.display_name


@dataclass
class Population:
    """An issuer's keys and cadres: made by `make_population` or read by `read_population`."""

    iss: str
    issuers: list[Issuer]  # every key in the trust list; cadres are spread over them
    cadres: list[Cadre]
    seed: str
    issued_at: int  # Unix seconds: the credentials' iat
    days: int  # credentials are valid this many days from issued_at

    @property
    def expires_at(self) -> int:
        return self.issued_at + self.days * DAY_S

    def trust_entries(self) -> list[dict[str, Any]]:
        """The trust list (token-format.md §5), one entry per issuer key."""
        return [issuer.trust_entry() for issuer in self.issuers]

    def cards(self) -> list[Cadre]:
        """The cadres who hold a card, in roster order."""
        return [c for c in self.cadres if c.card_uid is not None]

    def by_sub(self, sub: str) -> Cadre:
        for cadre in self.cadres:
            if cadre.sub == sub:
                return cadre
        raise KeyError(sub)

    def roster_csv(self) -> str:
        """The card roster: header uid,iss,sub,unit,display_name,status; uid in lowercase hex."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("uid", "iss", "sub", "unit", "display_name", "status"))
        for c in self.cards():
            assert c.card_uid is not None
            writer.writerow(
                (c.card_uid.hex(), self.iss, c.sub, c.unit, c.display_name, c.card_status)
            )
        return out.getvalue()

    def summary(self) -> dict[str, Any]:
        """What was made, for a person or a script: counts, keys, files and every cadre."""
        units = Counter(c.unit for c in self.cadres)
        card_lengths = Counter(len(c.card_uid) for c in self.cards() if c.card_uid is not None)
        return {
            "iss": self.iss,
            "seed": self.seed,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "issuer_keys": [
                {"kid": i.kid.hex(), "public_key": i.public_key.hex(), "alg": i.alg}
                for i in self.issuers
            ],
            "sm2_phones": sum(c.wallet.holder_alg == SM2 for c in self.cadres),
            "cadre_count": len(self.cadres),
            "card_count": len(self.cards()),
            "card_uid_bytes": {str(k): v for k, v in sorted(card_lengths.items())},
            "units": dict(sorted(units.items())),
            "files": {
                "trust": TRUST_FILE,
                "revoked": REVOKED_FILE,
                "roster": ROSTER_FILE,
                "issuer_keys": ISSUER_KEYS_FILE,
                "wallets": WALLETS_DIR + "/",
            },
            "cadres": [
                {
                    "sub": c.sub,
                    "unit": c.unit,
                    "display_name": c.display_name,
                    "wallet": f"{WALLETS_DIR}/{c.sub}.json",
                    "card_uid": c.card_uid.hex() if c.card_uid is not None else None,
                    "phone_alg": c.wallet.holder_alg,
                }
                for c in self.cadres
            ],
        }


def chinese_name(rng: random.Random) -> str:
    """A plausible Chinese personal name: a surname and one or two given-name characters."""
    given = "".join(rng.choice(_GIVEN) for _ in range(1 if rng.random() < 0.3 else 2))
    return rng.choice(_SURNAMES) + given


def card_uid(card_type: str, rng: random.Random) -> bytes:
    """A canonical card UID as a card of this type would give it.

    rdm6300: EM4100, a version (customer) byte then a 32-bit id. mifare4: a
    4-byte NUID, never starting with the cascade tag 0x88. mifare7: a 7-byte
    UID starting with NXP's manufacturer code 0x04.
    """
    if card_type == "rdm6300":
        return bytes([rng.randrange(1, 256)]) + rng.randbytes(4)
    if card_type == "mifare4":
        first = rng.choice([b for b in range(1, 256) if b != 0x88])
        return bytes([first]) + rng.randbytes(3)
    if card_type == "mifare7":
        return b"\x04" + rng.randbytes(6)
    raise PopulationError(f"card type {card_type!r} is not one of {', '.join(CARD_TYPE_CHOICES)}")


def issuer_key_seed(seed: str, iss: str, index: int) -> str:
    """The seed string of an issuer key (wallet.signing_key_from_seed hashes it)."""
    return f"hw-sim/{seed}/issuer/{iss}/{index}"


def issuer_key_alg(alg: str, index: int) -> str:
    """The algorithm (ED25519 or SM2) of issuer key ``index`` under ``--alg alg``."""
    if alg == "mixed":
        return ED25519 if index % 2 == 0 else SM2
    return _ALG_NAMES[alg]


def sm2_phones(count: int, share: float, issuer_keys: int = 1) -> list[bool]:
    """Which of ``count`` cadres, in order, hold an SM2 phone key: ``share`` of the cadres
    of each issuer key, spread evenly. Cadre n is the j-th (j = n // issuer_keys) of key
    n % issuer_keys, and holds one when floor((j+1)*share) > floor(j*share), so every key,
    Ed25519 or SM2, certifies phones of both algorithms."""
    return [
        int((n // issuer_keys + 1) * share) > int(n // issuer_keys * share) for n in range(count)
    ]


def make_population(
    *,
    now: int,
    iss: str = DEFAULT_ISS,
    cadres: int = 50,
    units: Sequence[str] = DEFAULT_UNITS,
    cards_fraction: float = 0.3,
    card_type: str = "rdm6300",
    seed: str = "hw-sim",
    issuer_keys: int = 1,
    days: int = 365,
    alg: str = "ed25519",
    sm2_share: float | None = None,
) -> Population:
    """An issuer with `issuer_keys` keys and `cadres` enrolled cadres, all from `seed`.

    Credentials are issued at `now` and valid for `days` days. Cadres are
    spread over `units` and over the issuer keys in turn (so every unit and
    key is used); `cards_fraction` of them (by a seeded draw, rounded) also
    hold a card of `card_type` ("mixed": each card rdm6300, mifare4 or
    mifare7). Subs are s000001, s000002, ...

    `alg` (ALG_CHOICES) gives the keys' algorithms: "ed25519" or "sm2" every key,
    "mixed" issuer keys Ed25519 and SM2 in turn (so at least two) and half the
    phones SM2. `sm2_share`, when given, is the share of phones with an SM2 key
    whatever `alg` says (sm2_phones spreads them), so every mix of issuer and
    phone algorithm can be made.
    """
    if not iss or not iss.isprintable():
        raise PopulationError("the issuer id (--iss) must be a non-empty printable text")
    if cadres < 0 or cadres > 1_000_000:
        raise PopulationError("the number of cadres must be between 0 and 1,000,000")
    if not units or any(not u or not u.isprintable() for u in units):
        raise PopulationError("give at least one unit, each a non-empty printable text")
    if not 0.0 <= cards_fraction <= 1.0:
        raise PopulationError("the card fraction must be between 0 and 1")
    if card_type not in CARD_TYPE_CHOICES:
        raise PopulationError(f"card type must be one of {', '.join(CARD_TYPE_CHOICES)}")
    if not 1 <= issuer_keys <= 16:
        raise PopulationError("the number of issuer keys must be between 1 and 16")
    if days < 1:
        raise PopulationError("credentials must be valid for at least one day")
    if alg not in ALG_CHOICES:
        raise PopulationError(f"the key algorithm (--alg) must be one of {', '.join(ALG_CHOICES)}")
    if alg == "mixed" and issuer_keys < 2:
        raise PopulationError(
            "--alg mixed makes Ed25519 and SM2 issuer keys in turn: give --issuer-keys 2 or more"
        )
    share = _DEFAULT_SM2_SHARE[alg] if sm2_share is None else sm2_share
    if not 0.0 <= share <= 1.0:
        raise PopulationError("the share of SM2 phones (--sm2-share) must be between 0 and 1")
    issuers = [
        Issuer(iss, signing_key_from_seed(issuer_key_seed(seed, iss, k), issuer_key_alg(alg, k)))
        for k in range(issuer_keys)
    ]
    phone_sm2 = sm2_phones(cadres, share, issuer_keys)
    rng = random.Random(f"hw-sim/{seed}/population/{iss}")
    card_count = round(cadres * cards_fraction)
    with_card = set(rng.sample(range(cadres), card_count))
    used_uids: set[bytes] = set()
    people: list[Cadre] = []
    for n in range(cadres):
        sub = f"s{n + 1:06d}"
        wallet = make_wallet(
            issuers[n % issuer_keys],
            sub,
            units[n % len(units)],
            chinese_name(rng),
            now=now,
            days=days,
            seed=f"hw-sim/{seed}/wallet/{iss}/{sub}",
            alg=SM2 if phone_sm2[n] else ED25519,
        )
        uid = None
        if n in with_card:
            kind = rng.choice(list(CARD_TYPES)) if card_type == "mixed" else card_type
            uid = card_uid(kind, rng)
            while uid in used_uids:
                uid = card_uid(kind, rng)
            used_uids.add(uid)
        people.append(Cadre(wallet, uid))
    return Population(iss, issuers, people, seed, now, days)


# --- files ---------------------------------------------------------------------


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` via a temp file, fsync and rename: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def write_population(population: Population, out_dir: str | Path) -> dict[str, Any]:
    """Write every file of `population` under `out_dir` (made if missing); returns the summary.

    Private material (the issuer keys, the wallets' holder keys) is written
    readable by the owner only.
    """
    out = Path(out_dir)
    wallets = out / WALLETS_DIR
    try:
        wallets.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PopulationError(f"cannot make the output folder {wallets}: {exc.strerror}") from None
    for cadre in population.cadres:
        if not _SUB_RE.match(cadre.sub):
            raise PopulationError(f"cadre id {cadre.sub!r} cannot be a wallet file name")
        write_text_atomic(wallets / f"{cadre.sub}.json", cadre.wallet.to_json() + "\n", 0o600)
    write_text_atomic(out / TRUST_FILE, _json(population.trust_entries()))
    write_text_atomic(out / REVOKED_FILE, _json([]))
    write_text_atomic(out / ROSTER_FILE, population.roster_csv())
    private = [
        {
            "iss": i.iss,
            "kid": i.kid.hex(),
            "alg": i.alg,
            "seed": issuer_key_seed(population.seed, i.iss, k),
            "private_key": private_bytes(i.key).hex(),
        }
        for k, i in enumerate(population.issuers)
    ]
    write_text_atomic(out / ISSUER_KEYS_FILE, _json(private), 0o600)
    summary = population.summary()
    summary["days"] = population.days
    write_text_atomic(out / SUMMARY_FILE, _json(summary))
    return summary


def read_population(out_dir: str | Path) -> Population:
    """A population back from the folder `write_population` wrote (keys, wallets, cards)."""
    out = Path(out_dir)
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
        private = json.loads((out / ISSUER_KEYS_FILE).read_text(encoding="utf-8"))
        roster = list(csv.DictReader(io.StringIO((out / ROSTER_FILE).read_text(encoding="utf-8"))))
        issuers = [
            Issuer(
                p["iss"],
                key_from_private_bytes(bytes.fromhex(p["private_key"]), p.get("alg", ED25519)),
            )
            for p in private
        ]
        status = {row["sub"]: row["status"] for row in roster}
        people = []
        for entry in summary["cadres"]:
            wallet = Wallet.from_json((out / entry["wallet"]).read_text(encoding="utf-8"))
            uid = bytes.fromhex(entry["card_uid"]) if entry["card_uid"] else None
            people.append(Cadre(wallet, uid, status.get(wallet.sub, "active")))
    except OSError as exc:
        raise PopulationError(
            f"{out}: not a complete hw-sim issuer folder ({exc.filename}: {exc.strerror}); "
            "make one with hw-sim issuer --out DIR"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PopulationError(f"{out}: a file of the issuer folder is damaged: {exc}") from None
    for issuer, p in zip(issuers, private, strict=True):
        if issuer.kid.hex() != p["kid"]:
            raise PopulationError(
                f"{out / ISSUER_KEYS_FILE}: key {p['kid']} is not its private key"
            )
    return Population(
        summary["iss"],
        issuers,
        people,
        summary["seed"],
        summary["issued_at"],
        summary.get("days", (summary["expires_at"] - summary["issued_at"]) // DAY_S),
    )
