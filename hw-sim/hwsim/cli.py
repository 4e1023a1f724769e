"""The hw-sim command: the hardware simulator, one subcommand per simulated part.

This module owns the command line and nothing else. ``COMMANDS`` is one table:
each row is a command's name, its one-line help, its page of description, its
arguments (``arg`` and ``one_of``, argparse's own keywords), its handler, and
the actions under it; ``build_parser`` builds the argparse tree from the table
and holds no command of its own. Each handler is a small function that calls
the hwsim library and prints what a technician needs next; every library error
becomes one line on standard error that says what happened and what to do,
with exit status 2. The simulators that serve (camera, card-reader, county)
run in the foreground until Ctrl-C, SIGTERM or --stop-after, and always close
what they opened. A new simulator slots in as one more row. Nothing here holds
logic that the tests or the lunch-rush scenario would need: they use the
library directly.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hwsim import CAMERA_PORT, history
from hwsim import population as pop
from hwsim import reader as reader_mod
from hwsim.phone import WalletError, draw_code

PROG = "hw-sim"
DAY_S = 86_400


class CommandError(Exception):
    """A usage problem the command found itself (a missing file, a bad combination)."""


# --- the table's shape -------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument: its flags (or its positional name) and argparse's keywords for it."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]


@dataclass(frozen=True)
class OneOf:
    """Arguments of which at most one may be given (exactly one when ``required``)."""

    args: tuple[Arg, ...]
    required: bool = False


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


def one_of(*args: Arg, required: bool = False) -> OneOf:
    return OneOf(args, required)


@dataclass(frozen=True)
class Command:
    """One hw-sim command or action: its name, one-line help, page of description,
    arguments and handler; ``actions`` are the commands under it (hw-sim camera show)."""

    name: str
    help: str
    description: str | None
    args: tuple[Arg | OneOf, ...]
    run: Callable[[argparse.Namespace], int]
    actions: tuple[Command, ...] = ()
    actions_dest: str = ""  # where the chosen action's name goes
    actions_description: str = ""


# --- argument types ------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if not (64 <= w <= 3840 and 64 <= h <= 2160):
        raise argparse.ArgumentTypeError("width and height must be within 64x64 .. 3840x2160")
    return w, h


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value

    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


# --- shared pieces of the handlers -----------------------------------------------------------


def _now(value: int | None) -> int:
    return int(time.time()) if value is None else value


def run_until_stopped(stop_after_s: float | None) -> str:
    """Block until Ctrl-C, SIGTERM or `stop_after_s`; the reason, for the last line printed."""
    stopped = threading.Event()
    why = ["--stop-after"]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        why[0] = signal.Signals(signum).name
        stopped.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stopped.wait(stop_after_s)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return why[0]


def _print_json(answer: dict[str, Any], indent: int | None = None) -> int:
    answer.pop("ok", None)
    print(json.dumps(answer, ensure_ascii=False, indent=indent))
    return 0


# --- hw-sim issuer -----------------------------------------------------------------------


def cmd_issuer(a: argparse.Namespace) -> int:
    out = Path(a.out)
    if (out / pop.SUMMARY_FILE).exists() and not a.force:
        raise CommandError(
            f"{out} already holds a population; use another --out, or --force to replace it "
            "(its wallet counters restart, so terminals that saw them will see replays)"
        )
    units = pop.DEFAULT_UNITS
    if a.units:
        units = tuple(u.strip() for item in a.units for u in item.split(",") if u.strip())
    now = (int(time.time()) // DAY_S - 1) * DAY_S if a.now is None else a.now
    if a.seed is None:
        import secrets

        seed = secrets.token_hex(8)
    else:
        seed = a.seed
    population = pop.make_population(
        now=now,
        iss=a.iss,
        cadres=a.cadres,
        units=units,
        cards_fraction=a.cards_fraction,
        card_type=a.card_type,
        seed=seed,
        issuer_keys=a.issuer_keys,
        days=a.days,
        alg=a.alg,
        sm2_share=a.sm2_share,
    )
    summary = pop.write_population(population, out)
    algs = ", ".join(
        f"{n} {alg}" for alg, n in sorted(Counter(k["alg"] for k in summary["issuer_keys"]).items())
    )
    print(
        f"issuer {summary['iss']}: {summary['cadre_count']} cadres in {len(summary['units'])} "
        f"units, {summary['card_count']} cards, {len(summary['issuer_keys'])} key(s) ({algs}), "
        f"{summary['sm2_phones']} SM2 phone(s), seed {seed}"
    )
    _print_issuer_next(out, population)
    return 0


def _print_issuer_next(out: Path, population: pop.Population) -> None:
    print(f"wrote {out}/: {pop.TRUST_FILE}, {pop.REVOKED_FILE}, {pop.ROSTER_FILE},")
    print(f"  {pop.SUMMARY_FILE}, {pop.ISSUER_KEYS_FILE} (private), {pop.WALLETS_DIR}/ (private)")
    print("load the lists into a terminal:")
    print(
        f"  canteen-terminal lists install --issuers {out / pop.TRUST_FILE} "
        f"--revocations {out / pop.REVOKED_FILE} --roster {out / pop.ROSTER_FILE}"
    )
    if population.cadres:
        first = population.cadres[0]
        print("draw a code from a phone:")
        print(f"  hw-sim phone --wallet {out / pop.WALLETS_DIR / (first.sub + '.json')}")


# --- hw-sim phone --------------------------------------------------------------------------


def cmd_phone(a: argparse.Namespace) -> int:
    text, wallet = draw_code(a.wallet, _now(a.now))
    if not (a.png or a.frame):
        print(text)
        return 0
    from hwsim import render

    if a.png:
        Path(a.png).write_bytes(render.phone_screen_png(text, a.seed))
        where = a.png
    else:
        import cv2

        scene = render.random_scene(a.seed)
        if not cv2.imwrite(a.frame, render.render_frame(text, scene)):
            raise CommandError(f"{a.frame}: cannot write the frame (use .jpg or .png)")
        where = a.frame
    print(
        f"{wallet.sub} ({wallet.display_name}) code #{wallet.ctr} written to {where}",
        file=sys.stderr,
    )
    return 0


# --- hw-sim camera ----------------------------------------------------------------------------


def cmd_camera(a: argparse.Namespace) -> int:
    from hwsim import camera as camera_mod

    sim = camera_mod.CameraSim(
        a.host, a.port, a.fps, a.size, hold_s=a.hold, gap_s=a.gap, seed=a.seed
    ).start()
    try:
        print(f"camera at {sim.url} ({a.size[0]}x{a.size[1]}, {a.fps:g} fps)", flush=True)
        print(f'  terminal settings: [camera] source = "{sim.url}"')
        print(f"  show a phone:      hw-sim camera show --url {sim.control_url} --wallet FILE")
        print(f"  watch it:          {sim.control_url}/ in a browser; stop with Ctrl-C", flush=True)
        why = run_until_stopped(a.stop_after)
    finally:
        sim.stop()
    print(f"stopped ({why})", flush=True)
    return 0


def cmd_camera_show(a: argparse.Namespace) -> int:
    from hwsim import camera as camera_mod

    control = camera_mod.CameraControl(a.url)
    text = a.text
    label = "the given text"
    if a.wallet:
        # Drawn here, not by the camera: the wallet may be on this side only.
        text, wallet = draw_code(a.wallet, _now(a.now))
        label = f"{wallet.sub} ({wallet.display_name}) code #{wallet.ctr}"
    answer = control.show(text, hold_s=a.hold, wait=not a.no_wait)
    state = "queued" if a.no_wait else "in view"
    print(f"{label}: {state} for {answer['hold_s']:g} s (show {answer['show']})")
    return 0


def cmd_camera_status(a: argparse.Namespace) -> int:
    from hwsim import camera as camera_mod

    answer = camera_mod.CameraControl(a.url).health()
    print(json.dumps(answer, ensure_ascii=False, indent=1))
    return 0


# --- hw-sim card-reader -----------------------------------------------------------------------


def cmd_card_reader(a: argparse.Namespace) -> int:
    sim = reader_mod.ReaderSim(
        a.kind,
        a.link,
        ascii_format=a.ascii_format,
        ascii_byte_order=a.ascii_byte_order,
        frame_interval_s=a.frame_interval,
    ).start()
    try:
        status = sim.status()
        print(f"{a.kind} card reader at {a.link} (pty {status['tty']})", flush=True)
        print(f'  terminal settings: [reader] port = "{a.link}", kind = "{a.kind}"')
        print(f"  swipe a card:      hw-sim card-reader swipe --link {a.link} --uid HEX")
        print(f"  control socket:    {sim.control}; stop with Ctrl-C", flush=True)
        why = run_until_stopped(a.stop_after)
    finally:
        sim.stop()
    print(f"stopped ({why})", flush=True)
    return 0


def _reader_control(a: argparse.Namespace) -> reader_mod.ReaderControl:
    return reader_mod.ReaderControl(a.control or reader_mod.control_path(a.link))


def cmd_reader_swipe(a: argparse.Namespace) -> int:
    answer = _reader_control(a).swipe(a.uid, noise=a.noise, repeat=a.repeat)
    if "read" in answer and answer["read"] < a.repeat:
        raise CommandError(
            f"the card was in the field but read {answer['read']} of {a.repeat} times: "
            "is the terminal running and polling the PN532?"
        )
    return _print_json(answer)


def cmd_reader_noise(a: argparse.Namespace) -> int:
    return _print_json(_reader_control(a).noise(a.bytes))


def cmd_reader_request(a: argparse.Namespace) -> int:
    """unplug, replug and status: the action's name is the request."""
    answer = _reader_control(a).request(a.reader_action)
    return _print_json(answer, indent=1 if a.reader_action == "status" else None)


# --- hw-sim county ----------------------------------------------------------------------------


def cmd_county(a: argparse.Namespace) -> int:
    from hwsim import county as county_mod

    if a.data is None:
        raise CommandError("hw-sim county needs --data DIR")

    def said(on: bool, at: float) -> None:
        state = "network DOWN (partition)" if on else "network back"
        print(f"[{at:7.1f} s] {state}", flush=True)

    try:
        windows = county_mod.parse_partitions(a.partition)
        sim = county_mod.CountySim(
            a.data,
            port=a.port,
            latency_ms=a.latency_ms,
            drop=a.drop,
            error_500=a.error_500,
            partitions=windows,
            partition_mode=a.partition_mode,
            seed=a.seed,
            on_partition=said,
        ).start()
    except county_mod.CountySimError as exc:
        raise CommandError(str(exc)) from None
    try:
        if sim.created_ca:
            print(f"made a new county CA in {a.data} (terminals pin it when provisioned)")
        print(f"county server at {sim.url} ({_county_faults(a, windows)})", flush=True)
        print(f"  the server itself (no faults): {sim.server_url}")
        print(f"  register a terminal: canteen-county terminal add --data {a.data} --canteen C")
        print(
            f"  provision it:        canteen-terminal provision --state DIR --server {sim.url} "
            "--code CODE"
        )
        print("  stop with Ctrl-C", flush=True)
        why = run_until_stopped(a.stop_after)
        stats = sim.stats()
    finally:
        sim.stop()
    fired = ", ".join(f"{k} {v}" for k, v in sorted(stats["faults"].items())) or "none"
    print(f"stopped ({why}); {stats['connections']} connections, faults fired: {fired}")
    return 0


def _county_faults(a: argparse.Namespace, windows: Sequence[tuple[float, float]]) -> str:
    faults = []
    if a.latency_ms:
        faults.append(f"latency {a.latency_ms:g} ms")
    if a.drop:
        faults.append(f"drop {a.drop:g}")
    if a.error_500:
        faults.append(f"500s {a.error_500:g}")
    if windows:
        spans = ", ".join(f"{s:g}-{e:g} s" for s, e in windows)
        faults.append(f"{a.partition_mode} partitions at {spans}")
    return "; ".join(faults) or "no faults"


# --- hw-sim agencies --------------------------------------------------------------------------


def cmd_agencies(a: argparse.Namespace) -> int:
    from hwsim import agencies

    made = agencies.make_directory(seed=a.seed, counties=a.counties)
    agencies_file, canteens_file = agencies.write_directory(made, a.out)
    levels = ", ".join(f"{n} {level}" for level, n in made.levels().items())
    print(
        f"directory of seed {made.seed}: {len(made.directory.agencies)} agencies ({levels}), "
        f"{len(made.directory.canteens)} canteens"
    )
    print(f"wrote {agencies_file} and {canteens_file}")
    print("import and publish them at the county:")
    print(f"  canteen-county agencies import {agencies_file}")
    print(f"  canteen-county canteens import {canteens_file}")
    return 0


# --- hw-sim scenario ----------------------------------------------------------------------------


def cmd_scenario(a: argparse.Namespace) -> int:
    import tempfile

    from hwsim import scenario

    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="lunch-rush-"))
    if a.short:
        changes = {} if a.cadres == 300 else {"cadres": a.cadres}
        opts = scenario.Options.shortened(
            out, speed=a.speed, seed=a.seed, sm2_share=a.sm2_share, **changes
        )
    else:
        opts = scenario.Options(
            out=out, cadres=a.cadres, speed=a.speed, seed=a.seed, sm2_share=a.sm2_share
        )
    try:
        opts.check()
        if a.counter:
            from hwsim.scenario.counter import counter_text, play_counter
            from hwsim.scenario.report import check_counter

            record = play_counter(opts, time.time())
            failures = check_counter(record)
            text = counter_text(record, failures)
            (out / "report.txt").write_text(text + "\n", encoding="utf-8")
            print(text, flush=True)
            return 1 if failures else 0
        print(f"lunch-rush in {out} ({opts.cadres} presentations at {opts.speed:g}x)", flush=True)
        _record, failures, text = scenario.play(opts, lambda s: print(s, flush=True))
    except scenario.ScenarioError as exc:
        raise CommandError(str(exc)) from None
    print(text, flush=True)
    return 1 if failures else 0


# --- the command table ----------------------------------------------------------------------

STOP_AFTER = arg("--stop-after", type=_positive(float), metavar="S", help="stop after S seconds")
CAMERA_URL = f"http://127.0.0.1:{CAMERA_PORT}"
READER_TARGET = one_of(
    arg(
        "--link",
        default=reader_mod.DEFAULT_LINK,
        help="the running simulator's port link (default %(default)s); its control socket "
        "is LINK.ctl",
    ),
    arg("--control", metavar="SOCKET", help="the control socket itself"),
)

ISSUER = Command(
    "issuer",
    "make issuer keys, cadres, phone wallets, cards and the lists a terminal loads",
    "Make a simulated one-card platform: issuer key(s), N cadres with units and Chinese "
    "names, one phone wallet each (DIR/wallets/<sub>.json: credential and holder key), "
    "canteen cards for a share of them, and the files a terminal or county server loads: "
    "trust.json and revoked.json (docs/token-format.md section 5), roster.csv "
    "(uid,iss,sub,unit,display_name,status) and population.json (a summary). The same "
    "--seed and --now give the same files (SM2 signatures excepted: each takes a fresh "
    "nonce, so an SM2-signed credential verifies the same but differs in its bytes).",
    (
        arg("--out", required=True, metavar="DIR", help="folder to write (made if missing)"),
        arg("--iss", default=pop.DEFAULT_ISS, help="issuer id (default %(default)s)"),
        arg("--cadres", type=int, default=50, metavar="N", help="cadres (default 50)"),
        arg(
            "--units",
            nargs="+",
            metavar="UNIT",
            help="agency codes the cadres belong to, spread in turn (space- or comma-separated); "
            "a canteen's own units are in its settings, [canteen] units. Default: "
            + ",".join(pop.DEFAULT_UNITS),
        ),
        arg(
            "--cards-fraction",
            type=float,
            default=0.3,
            metavar="F",
            help="share of cadres who also hold a canteen card (default 0.3)",
        ),
        arg(
            "--card-type",
            choices=pop.CARD_TYPE_CHOICES,
            default="rdm6300",
            help="rdm6300: 125 kHz EM4100, 5-byte UIDs (the default reader); mifare4 / mifare7: "
            "ISO 14443-A 4- or 7-byte UIDs (PN532 and most ASCII readers); mixed: some of each",
        ),
        arg("--issuer-keys", type=int, default=1, metavar="N", help="issuer keys (1)"),
        arg(
            "--alg",
            choices=pop.ALG_CHOICES,
            default="ed25519",
            help="key algorithm (token.md section 7): ed25519 (default) or sm2 (SM2 with SM3) "
            "for every issuer key and phone; mixed: issuer keys Ed25519 and SM2 in turn "
            "(--issuer-keys 2 or more) and half the phones SM2",
        ),
        arg(
            "--sm2-share",
            type=float,
            metavar="F",
            help="share of phones with an SM2 key, whatever --alg gives the issuer keys "
            "(default: 0 for ed25519, 1 for sm2, 0.5 for mixed)",
        ),
        arg("--days", type=int, default=365, help="credential validity (default 365)"),
        arg(
            "--now",
            type=int,
            metavar="UNIX_SECONDS",
            help="issue time of the credentials (default: 00:00 UTC yesterday, so the same "
            "--seed gives the same files all day)",
        ),
        arg(
            "--seed",
            help="makes every key, name, card and credential reproducible (default: a random "
            "seed, recorded in population.json)",
        ),
        arg(
            "--force",
            action="store_true",
            help="overwrite an existing population; its wallets' counters start again from 0, "
            "so terminals that saw the old ones will refuse the new codes as replays",
        ),
    ),
    cmd_issuer,
)

PHONE = Command(
    "phone",
    "draw a QR code from a cadre's wallet: print its text or draw the phone's screen",
    "Draw the next code from a wallet as the cadre's phone would: the phone's time and a "
    "counter one above the last, saved back into the wallet file before the code is "
    "shown (so every code is new to a terminal). Prints the code's text, or writes a "
    "picture of the phone's screen (--png) or of a camera frame (--frame).",
    (
        arg("--wallet", required=True, metavar="FILE", help="a wallet from hw-sim issuer"),
        arg(
            "--now",
            type=int,
            metavar="UNIX_SECONDS",
            help="the phone's clock when it draws (default: this computer's clock); an old or "
            "future time shows how the terminal handles a phone with a wrong clock",
        ),
        one_of(
            arg("--text", action="store_true", help="print the code's text (the default)"),
            arg(
                "--png",
                metavar="OUT",
                help="write the phone's screen as a PNG, to show on a monitor held up to a real "
                "camera",
            ),
            arg(
                "--frame",
                metavar="OUT",
                help="write a camera frame of the phone held over a counter (JPEG or PNG by the "
                "name), for canteen-terminal scan-image",
            ),
        ),
        arg("--seed", type=int, default=0, help="picture variation for --png/--frame"),
    ),
    cmd_phone,
)

CAMERA = Command(
    "camera",
    "an MJPEG camera on 127.0.0.1 that shows phones to the terminal on command",
    "Run a simulated camera: an MJPEG stream (multipart/x-mixed-replace) that the "
    "terminal reads as its [camera] source, http://127.0.0.1:PORT/stream.mjpg. It shows "
    "an empty canteen counter; when asked, a phone showing a QR code is held up "
    "(perspective, blur, glare, noise) for --hold seconds and taken away. It runs until "
    "Ctrl-C or SIGTERM. From another shell, 'hw-sim camera show --wallet FILE' draws a "
    'code and shows it; scripts can POST /show with {"text": ...} or '
    '{"wallet": path}; GET /health reports frames, clients and pacing; open '
    "http://127.0.0.1:PORT/ in a browser to watch.",
    (
        arg("--host", default="127.0.0.1", help="loopback address to serve on (%(default)s)"),
        arg(
            "--port",
            type=int,
            default=CAMERA_PORT,
            help="port (default %(default)s; 0 picks a free one and prints it)",
        ),
        arg("--fps", type=_positive(float), default=15.0, help="frames per second (15)"),
        arg("--size", type=_size, default=(1280, 720), help="WIDTHxHEIGHT (1280x720)"),
        arg(
            "--hold",
            type=_positive(float),
            default=1.5,
            metavar="S",
            help="how long a phone stays in view (default 1.5 s)",
        ),
        arg(
            "--gap",
            type=float,
            default=0.4,
            metavar="S",
            help="empty counter between phones (0.4 s)",
        ),
        arg("--seed", type=int, default=0, help="varies the counter and the phones"),
        STOP_AFTER,
    ),
    cmd_camera,
    actions=(
        Command(
            "show",
            "hold a phone up to the running simulated camera",
            "Draw the next code from a wallet (or take a given text) and ask the running "
            "simulated camera to show it: a phone comes into view, stays --hold seconds and is "
            "taken away. Returns once the phone is in view.",
            (
                arg(
                    "--url",
                    default=CAMERA_URL,
                    help="the running camera (its stream URL or its base URL; default %(default)s)",
                ),
                one_of(
                    arg("--wallet", metavar="FILE", help="a wallet from hw-sim issuer"),
                    arg("--text", metavar="QR", help="a QR text to show as it is (e.g. a replay)"),
                    required=True,
                ),
                arg("--now", type=int, metavar="UNIX_SECONDS", help="the phone's clock (--wallet)"),
                arg("--hold", type=_positive(float), metavar="S", help="seconds in view"),
                arg("--no-wait", action="store_true", help="return at once, do not wait for it"),
            ),
            cmd_camera_show,
        ),
        Command(
            "status",
            "the running camera's health, as JSON",
            None,
            (arg("--url", default=CAMERA_URL, help="the running camera (default %(default)s)"),),
            cmd_camera_status,
        ),
    ),
    actions_dest="camera_action",
    actions_description="Without an ACTION the camera runs; with one, the command talks to a "
    "camera already running (at --url).",
)


def _reader_request(name: str, text: str) -> Command:
    """unplug, replug, status: no argument but where the simulator is."""
    return Command(
        name, text, text[0].upper() + text[1:] + ".", (READER_TARGET,), cmd_reader_request
    )


CARD_READER = Command(
    "card-reader",
    "a serial card reader (RDM6300, ASCII or PN532) on a pty; swipe cards on command",
    "Run a simulated card reader: a serial port (a pty) linked at --link, which the "
    "terminal opens as its [reader] port, behaving as an RDM6300 (125 kHz, 5-byte UIDs), "
    "an ASCII line reader, or a PN532 in HSU mode (answers wake-up, SAMConfiguration and "
    "InListPassiveTarget polls). It runs until Ctrl-C or SIGTERM. From another shell, "
    "'hw-sim card-reader swipe --uid HEX' presents a card (UIDs are in the issuer's "
    "roster.csv), and 'unplug' / 'replug' pull and restore the cable. Commands travel "
    "over the Unix socket LINK.ctl (one JSON line each way).",
    (
        arg(
            "--kind",
            choices=reader_mod.KINDS,
            default=reader_mod.RDM6300,
            help="which reader to behave as; must match the terminal's [reader] kind "
            "(default %(default)s)",
        ),
        arg(
            "--link",
            default=reader_mod.DEFAULT_LINK,
            help="where the serial port appears; set the terminal's [reader] port to it "
            "(default %(default)s)",
        ),
        arg(
            "--ascii-format",
            choices=("hex", "dec"),
            default="hex",
            help="ascii readers: print the UID in hex or zero-padded decimal (match [reader] "
            "ascii_format)",
        ),
        arg(
            "--ascii-byte-order",
            choices=("msb_first", "lsb_first"),
            default="msb_first",
            help="ascii readers: print UID0 first or last (match [reader] ascii_byte_order)",
        ),
        arg(
            "--frame-interval",
            type=_positive(float),
            default=0.1,
            metavar="S",
            help="seconds between the frames of a card held on an rdm6300/ascii reader (0.1)",
        ),
        STOP_AFTER,
    ),
    cmd_card_reader,
    actions=(
        Command(
            "swipe",
            "present a card to the running simulated reader",
            "Present a card: the running simulator sends the UID as its reader kind would. "
            "With --repeat the card is held (several frames, or several PN532 polls); with "
            "--noise, line noise goes around it.",
            (
                READER_TARGET,
                arg("--uid", required=True, metavar="HEX", help="card UID, e.g. 0a1b2c3d4e"),
                arg("--noise", type=int, default=0, metavar="N", help="noise bytes around it"),
                arg("--repeat", type=int, default=1, metavar="N", help="frames (card held)"),
            ),
            cmd_reader_swipe,
        ),
        Command(
            "noise",
            "send line noise and no card",
            None,
            (
                READER_TARGET,
                arg("--bytes", type=int, default=1000, metavar="N", help="how many (1000)"),
            ),
            cmd_reader_noise,
        ),
        _reader_request("unplug", "pull the reader's cable: the port goes away until replug"),
        _reader_request("replug", "plug the reader back in at the same port path"),
        _reader_request("status", "what the simulated reader is doing, as JSON"),
    ),
    actions_dest="reader_action",
    actions_description="Without an ACTION the simulator runs; with one, the command talks to "
    "a simulator already running (at --link, or --control).",
)

COUNTY = Command(
    "county",
    "the reference county server behind a fault-injecting proxy (latency, drops, 500s, outages)",
    "Run the reference county server (the one canteen-county serve runs) on a port of "
    "its own, behind a proxy on 127.0.0.1 that breaks the network on purpose, the way a "
    "township link does: --latency-ms delays every chunk, --drop cuts connections "
    "before or after the server stored an upload, --error-500 answers uploads with "
    "HTTP 500, and --partition gives outages (seconds after start) during which every "
    "connection is refused or black-holed. Terminals use the printed proxy address as "
    "their county server, so a technician can watch a terminal keep selling offline and "
    "catch up when the link returns (canteen-terminal status; canteen-county entries "
    "--data DIR). The data directory is an ordinary county data directory; an empty one "
    "gets a new CA. It runs until Ctrl-C, SIGTERM or --stop-after.",
    (
        arg(
            "--data",
            metavar="DIR",
            help="the county data directory (canteen-county ca init); made with a new CA if "
            "empty (required without an ACTION)",
        ),
        arg(
            "--port",
            type=int,
            default=0,
            help="the port terminals connect to (the proxy; default 0: a free one, printed)",
        ),
        arg(
            "--latency-ms",
            type=float,
            default=0.0,
            metavar="X",
            help="delay every chunk of data, both ways, by X ms (a slow township link)",
        ),
        arg(
            "--drop",
            type=_probability,
            default=0.0,
            metavar="P",
            help="cut each connection with probability P, half before the request reaches the "
            "server (nothing stored) and half after it was stored (the answer is lost)",
        ),
        arg(
            "--error-500",
            type=_probability,
            default=0.0,
            metavar="P",
            help="answer a ledger upload with HTTP 500 with probability P, half before and half "
            "after the server stored it",
        ),
        arg(
            "--partition",
            default="",
            metavar="START:END,...",
            help="network outages in seconds after start, e.g. 60:120,300:330: during each, "
            "every connection is refused (or black-holed, see --partition-mode)",
        ),
        arg(
            "--partition-mode",
            choices=("refuse", "blackhole"),
            default="refuse",
            help="refuse: connections close at once (a cable pulled at the county); blackhole: "
            "connections are accepted and never answered (a dead township uplink), so the "
            "terminal waits for its [sync] deadline (default refuse)",
        ),
        arg("--seed", type=int, help="makes the drawn faults reproducible"),
        STOP_AFTER,
    ),
    cmd_county,
    actions=(
        Command(
            "history",
            history.HELP,
            history.DESCRIPTION,
            tuple(arg(*flags, **options) for flags, options in history.CLI_ARGS),
            history.run,
        ),
    ),
    actions_dest="county_action",
    actions_description="Without an ACTION the county server runs.",
)

AGENCIES = Command(
    "agencies",
    "make an agency directory: agencies at four levels and the canteens they run",
    "Make a simulated agency directory for county IT to import: one province with its "
    "departments, a few cities and --counties counties (and districts) under them, each "
    "government with its bureaus and each county with six to ten townships; Chinese "
    "names (湖南省, 郴州市, 汝城县财政局, ...), division codes and a finance account "
    "each. Every government's office services bureau runs a canteen, and each county's "
    "first township one more. Writes DIR/agencies.csv (code,name,level,parent,"
    "finance_account) and DIR/canteens.csv (canteen,name,operator), the files "
    "'canteen-county agencies import' and 'canteens import' read. The same --seed and "
    "--counties give the same files.",
    (
        arg("--out", required=True, metavar="DIR", help="folder to write (made if missing)"),
        arg("--seed", default="hw-sim", help="varies cities, counties, townships and accounts"),
        arg(
            "--counties",
            type=int,
            default=12,
            metavar="K",
            help="counties and districts, spread over up to four cities, 2 to 36 "
            "(default 12: about 260 agencies)",
        ),
    ),
    cmd_agencies,
)

SCENARIO = Command(
    "scenario",
    "play a whole lunch against a real terminal in accelerated time, and check it",
    "Play 'lunch-rush': a whole lunch at one canteen on a simulated clock that runs "
    "--speed times faster than real time. A real terminal daemon (its own settings and "
    "state in --out) reads phones from the simulated camera and cards from the simulated "
    "reader, and syncs with the reference county server behind the fault proxy. "
    "--cadres presentations, 70% by QR and 30% by card, 5% hostile (replayed and "
    "forged codes, revoked and expired credentials, second meals, lost cards and cards "
    "not in the roster); the cadres come from the canteen's own agency and from others "
    "at the same level, above, below, in other counties and cities, or not in the agency "
    "directory the county publishes (a few hundred agencies), and lunch has a price for "
    "each tier; their phone codes are Ed25519 or SM2 (--sm2-share); a ten-minute "
    "network outage in the middle; the lunch prices "
    "change and a revocation list is published during the run. At the end it checks "
    "every verdict against what it expected (each sale's price tier and price too), "
    "that every ledger verifies and that the "
    "county holds exactly the terminal's entries, prints the figures (decisions by "
    "reason, sales per price tier, latency p50/p99 from presentation to verdict on the "
    "screen stream, time to resync after the outage) and draws lunch-rush.png. Exit "
    "status 0 when every check passed, 1 when one failed, 2 when it could not run.",
    (
        arg("name", choices=("lunch-rush",), help="the scenario to play"),
        arg(
            "--cadres",
            type=int,
            default=300,
            metavar="N",
            help="presentations at the counter, 5%% of them hostile (default 300)",
        ),
        arg(
            "--speed",
            type=_positive(float),
            default=30.0,
            metavar="X",
            help="simulated seconds per real second, at most 60 (default 30: the 300-cadre "
            "lunch takes about five real minutes)",
        ),
        arg(
            "--out",
            metavar="DIR",
            help="folder for the run (made if missing; default: a new folder under /tmp): "
            "report.txt, lunch-rush.png, run.json, daemon.log, the terminal's state and the "
            "county's data",
        ),
        arg("--seed", default="lunch-rush", help="varies who comes when and how"),
        arg(
            "--sm2-share",
            type=float,
            default=0.3,
            metavar="F",
            help="share of cadres whose phone key is SM2 (token.md section 7; default 0.3); "
            "between 0 and 1 the issuer has an Ed25519 and an SM2 key and cadres alternate "
            "over them, so every mix of issuer and phone algorithm is tested; 0: all Ed25519, "
            "1: all SM2",
        ),
        arg(
            "--short",
            action="store_true",
            help="the CI run: 40 presentations (every hostile kind once) and a two-minute outage",
        ),
        arg(
            "--counter",
            action="store_true",
            help="decide the same plan with the terminal's decision core alone (no camera, "
            "reader, county or daemon; the agency directory handed to it): the verdicts, "
            "price tiers and prices in a few seconds",
        ),
    ),
    cmd_scenario,
)

COMMANDS: tuple[Command, ...] = (
    ISSUER,
    PHONE,
    CAMERA,
    CARD_READER,
    COUNTY,
    AGENCIES,
    SCENARIO,
)


# --- the parser, built from the table --------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser, args: Sequence[Arg | OneOf]) -> None:
    for a in args:
        if isinstance(a, OneOf):
            group = p.add_mutually_exclusive_group(required=a.required)
            for one in a.args:
                group.add_argument(*one.flags, **one.options)
        else:
            p.add_argument(*a.flags, **a.options)


def _add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Command
) -> None:
    """Add ``command`` (and the actions under it) to the subparsers ``sub``."""
    p = sub.add_parser(command.name, help=command.help, description=command.description)
    _add_arguments(p, command.args)
    p.set_defaults(func=command.run)
    if command.actions:
        actions = p.add_subparsers(
            dest=command.actions_dest,
            metavar="ACTION",
            description=command.actions_description,
        )
        for action in command.actions:
            _add_command(actions, action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hardware simulator for canteen terminal technicians: a simulated issuer "
        "and phones, a camera that shows phones to the terminal, and a card reader on a "
        "serial port, so a terminal can be installed and checked without the real parts.",
        epilog="Run 'hw-sim COMMAND --help' for each command. Typical session: hw-sim issuer "
        "--out sim; hw-sim camera; hw-sim card-reader; then point the terminal's [camera] "
        "source and [reader] port at them (docs/technicians.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _add_command(sub, command)
    return parser


# --- running a command -------------------------------------------------------------------------

_ERRORS: tuple[type[Exception], ...] = (
    CommandError,
    pop.PopulationError,
    WalletError,
    reader_mod.ReaderSimError,
    history.HistoryError,
)


def _errors() -> tuple[type[Exception], ...]:
    """The library errors that become one line; the camera's and the directory generator's
    only if they were loaded (the camera needs OpenCV, which the other simulators do not)."""
    camera = sys.modules.get("hwsim.camera")
    gen = sys.modules.get("hwsim.agencies")
    return (
        _ERRORS
        + ((camera.CameraSimError,) if camera is not None else ())
        + ((gen.DirectoryGenError,) if gen is not None else ())
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _errors() as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:  # Ctrl-C before a simulator was up: nothing to clean
        return 130


if __name__ == "__main__":
    sys.exit(main())
