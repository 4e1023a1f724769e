"""The lunch-rush scenario's lunch: one run, played against a real terminal, end to end.

This module owns playing a plan (``hwsim.scenario.plan``) on the simulated
clock: it sets up the canteen (``hwsim.scenario.canteen``) with the simulated
county, camera and card reader, presents each arrival through the real devices
(phones through CameraSim to the daemon's camera, cards through ReaderSim to
its reader), partitions the county proxy for the outage, has county IT publish
the settings change and the revocation as signed updates (``county.updates``:
the county's TUF repository, served at /tuf, fetched and applied by the running
daemon between two decisions), asks the model (``hwsim.scenario.model``) what
each presentation must get, pairs each with the decision the screen showed, and
collects the ledger and the county's copy into one ``RunRecord``. ``play``
then has it judged by ``hwsim.scenario.report``. It runs everything on
127.0.0.1 in a folder of its own, stops everything it started, and never
reaches into the terminal's files while the daemon runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwsim.scenario import report
from hwsim.scenario.canteen import (
    RunningTerminal,
    credential_revocation,
    daemon_log,
    init_updates,
    install_lists,
    meals_text,
    provision,
    serve_updates,
    settings_text,
)
from hwsim.scenario.clock import (
    LUNCH_OPENS,
    ORIGIN,
    SimClock,
    local_time,
    lunch_origin_ms,
    seconds_between,
)
from hwsim.scenario.model import LunchModel
from hwsim.scenario.plan import (
    CANTEEN_ID,
    OUTAGE_END,
    OUTAGE_START,
    PRICES_AFTER,
    PRICES_BEFORE,
    REVOCATION,
    SAME_TEXT_S,
    SETTINGS,
    TERMINAL_ID,
    Arrival,
    Options,
    WorldEvent,
    code_text,
    make_plan,
    unit_of,
)
from hwsim.scenario.record import Monitor, RunRecord, code_chain, entry_marks, qr_marks
from hwsim.wallet import Wallet
from protocol.agencies import OWN, VISITOR
from terminal.core.checkout import card_ref
from terminal.ledger import LedgerEntry

# The longest (real seconds) the outage waits for the queue, whatever goes wrong.
OUTAGE_WAIT_S = 120.0


class Lunch:
    """One run of the scenario: set up the canteen, play the plan, collect the record."""

    def __init__(self, opts: Options, progress: Callable[[str], None] = lambda _s: None) -> None:
        opts.check()
        self.opts = opts
        self.progress = progress
        self.out = Path(opts.out)
        self.origin_ms = lunch_origin_ms(time.time())
        self.plan = make_plan(opts, self.origin_ms // 1000)
        self.record = RunRecord(
            options={k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
            origin_ms=self.origin_ms,
        )
        self.model = LunchModel(self.plan.cast, opts.speed, self.plan.seating)
        self._texts: dict[int, tuple[str, int, float]] = {}  # arrival -> (text, t, in view until)
        self._holder: dict[str, RunningTerminal] = {}
        self._last_seq = 0
        # Presentations made while the county was partitioned, and whether the queue is done.
        self._offline = threading.Condition()
        self._offline_count = 0
        self._queue_done = False
        self._update_pending = False  # published, and the queue waits until it is in force

    # -- the whole run --

    def run(self) -> RunRecord:
        from hwsim.camera import CameraSim
        from hwsim.county import CountySim
        from hwsim.reader import ReaderSim

        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with daemon_log(self.out / "daemon.log"):
            clock = SimClock(self.origin_ms, self.opts.speed)
            self.clock = clock
            first_set = init_updates(
                self.out,
                self.out / "county",
                self.plan.cast,
                self.plan.seating.directory,
                clock.now_s(),
            )
            county = CountySim(
                self.out / "county",
                clock=clock.now_ms,
                partition_mode=self.opts.partition_mode,
                seed=0,
            ).start()
            serve_updates(county)
            camera = CameraSim(
                port=0,
                fps=15,
                size=(960, 540),
                hold_s=self.opts.hold_s,
                gap_s=self.opts.gap_s,
                seed=7,
                lifetime_s=7200,
            ).start()
            reader = ReaderSim("rdm6300", self.out / "reader", lifetime_s=7200).start()
            self.county, self.camera, self.reader = county, camera, reader
            monitor: Monitor | None = None
            try:
                state_dir = self.out / "state"
                provision(county, state_dir, clock)
                install_lists(state_dir, self.plan.cast, clock.now_s())
                self.settings_path = self.out / "terminal.toml"
                self.settings_path.write_text(
                    settings_text(
                        camera.url,
                        str(reader.link),
                        PRICES_BEFORE,
                        self.opts.speed,
                        self.plan.seating.own_units,
                    ),
                    encoding="utf-8",
                )
                self._start_terminal()
                # The first signed set (the same lists) is in force before the lunch opens.
                first = self._wait_applied(first_set, "the first signed update set")
                self._event("first_set", **first)
                monitor = Monitor(clock, county, self._holder).start()
                self._play()
                self._drain(monitor)
            finally:
                if monitor is not None:
                    monitor.stop()
                    self.record.samples = monitor.samples
                term = self._holder.pop("terminal", None)
                if term is not None:
                    term.stop()
                    self._collect_unmatched(term)
                camera.stop()
                reader.stop()
            try:
                self._final_sync(state_dir)
                self._collect(state_dir)
            finally:
                county.stop()
        self.record.ambiguous = self.model.ambiguous
        self.record.real_seconds = round(time.monotonic() - started, 1)
        (self.out / "run.json").write_text(self.record.to_json(), encoding="utf-8")
        return self.record

    def _start_terminal(self) -> None:
        term = RunningTerminal(self.settings_path, self.clock).start()
        self._holder["terminal"] = term

    def _event(self, kind: str, **extra: Any) -> None:
        self.record.events.append(
            {"kind": kind, "sim_ms": self.clock.now_ms(), "real": time.time(), **extra}
        )

    # -- the timeline --

    def _play(self) -> None:
        opened_ms = self.origin_ms + seconds_between(ORIGIN, LUNCH_OPENS) * 1000
        self.opened_ms = opened_ms
        total = len(self.plan.arrivals)
        stop = threading.Event()
        outage = threading.Thread(target=self._outage, args=(stop,), name="scenario-outage")
        outage.start()
        try:
            for item in self.plan.timeline():
                self.clock.wait_until(opened_ms + int(item.at_s * 1000))
                if isinstance(item, WorldEvent):
                    self._world(item)
                    continue
                self._present(item)
                done = item.n + 1
                if done % 25 == 0 or done == total:
                    now = local_time(self.clock.now_ms())
                    self.progress(f"  {done}/{total} presented, simulated {now}")
            with self._offline:
                self._queue_done = True
                self._offline.notify_all()
            outage.join()  # a lunch shorter than its outage still ends with the network back
        finally:
            stop.set()
            with self._offline:
                self._offline.notify_all()
            outage.join()

    def _outage(self, stop: threading.Event) -> None:
        """The network goes down and comes back on the simulated clock, whoever is at the
        counter, with two exceptions that keep the outage meaningful when the cadres' queue
        runs late (a loaded computer, a slow update):

        - it does not start while a published update is still on its way to the terminal
          (the queue waits for it, and would wait for the whole outage);
        - it lasts at least its planned length and ends only once ``min_offline`` cadres
          were served offline, the queue is done, or the queue is waiting for an update.

        The record keeps the real times, so the report gives the outage as it was."""
        when = {e.kind: e.at_s for e in self.plan.events}
        if OUTAGE_START not in when or OUTAGE_END not in when:
            return
        self.clock.wait_until(self.opened_ms + int(when[OUTAGE_START] * 1000), stop)
        with self._offline:
            self._offline.wait_for(
                lambda: stop.is_set() or not self._update_pending, timeout=OUTAGE_WAIT_S
            )
        if stop.is_set():
            return
        started_ms = self.clock.now_ms()
        self._partition(True)
        planned_end = self.opened_ms + int(when[OUTAGE_END] * 1000)
        self.clock.wait_until(max(planned_end, started_ms + int(self.opts.outage_s * 1000)), stop)
        with self._offline:
            self._offline.wait_for(
                lambda: (
                    stop.is_set()
                    or self._queue_done
                    or self._update_pending
                    or self._offline_count >= self.opts.min_offline
                ),
                timeout=OUTAGE_WAIT_S,
            )
        self._partition(False)  # even when stopping: the lunch ends with the network back

    def _partition(self, down: bool) -> None:
        self.county.set_partition(down)
        term = self._holder.get("terminal")
        last = term.daemon.worker.snapshot.get("last_seq") if term is not None else None
        self._event(OUTAGE_START if down else OUTAGE_END, last_seq=last)
        what = "network down (county partitioned)" if down else "network back"
        self.progress(f"  {local_time(self.clock.now_ms())} {what}")

    def _world(self, event: WorldEvent) -> None:
        with self._offline:
            self._update_pending = True
            self._offline.notify_all()  # an outage waiting to end must see the queue wait
        try:
            if event.kind == SETTINGS:
                self._change_settings()
            elif event.kind == REVOCATION:
                self._publish_revocation()
        finally:
            with self._offline:
                self._update_pending = False
                self._offline.notify_all()

    def _publish(self, publish: Callable[[Any, int], Any]) -> tuple[int, int, float, int]:
        """County IT publishes one signed change, signed at the simulated time; the set it
        makes, the simulated and real time of the publication, and the revocation count."""
        from county import updates as cu

        now = self.clock.now_s()
        with cu.CountyRepository(self.county.data) as repo:
            pub = publish(repo, now)
            count = repo.revocation_count()
        return int(pub.snapshot_version), self.clock.now_ms(), time.time(), count

    def _wait_applied(self, set_version: int, what: str) -> dict[str, Any]:
        """Wait until the daemon has applied update set ``set_version`` or a later one (it
        fetches after each sync and applies between two decisions): the next cadre is served
        under it. Nobody is presented meanwhile; the queue runs late if it takes long. While
        the county is partitioned the wait goes on: the set comes after the network."""
        term = self._holder["terminal"]
        t0 = time.monotonic()
        deadline = t0 + 60
        while True:
            applied = term.daemon.worker.call(lambda c: c.trust.applied_update_set())
            if applied is not None and int(applied["set"]) >= set_version:
                return {
                    "set": int(applied["set"]),
                    "wait_real_s": round(time.monotonic() - t0, 2),
                    "applied_seen_sim_ms": self.clock.now_ms(),
                }
            if self.county.partitioned:
                deadline = time.monotonic() + 60
            if time.monotonic() > deadline or not term.thread.is_alive():
                self.record.problems.append(
                    f"{what} (update set {set_version}) was not applied within 60 real s"
                )
                return {"set": None, "wait_real_s": round(time.monotonic() - t0, 2)}
            time.sleep(0.05)

    def _change_settings(self) -> None:
        """Lunch prices change: county IT publishes this canteen's new [[meals]] as a signed
        settings update; the daemon applies it between two decisions, without a restart."""
        file = self.out / "published-settings-v2.toml"
        file.write_text(
            "# Published by county IT for this canteen (hw-sim scenario lunch-rush).\n"
            + meals_text(PRICES_AFTER),
            encoding="utf-8",
        )
        set_version, sim_ms, real, _ = self._publish(
            lambda repo, now: repo.publish_settings(file, CANTEEN_ID, now)
        )
        self.progress(
            f"  {local_time(sim_ms)} settings published (lunch {PRICES_AFTER[OWN]} own to "
            f"{PRICES_AFTER[VISITOR]} visitor fen), update set {set_version}"
        )
        applied = self._wait_applied(set_version, "the settings change")
        self.model.prices = PRICES_AFTER
        self.record.events.append(
            {
                "kind": SETTINGS,
                "sim_ms": sim_ms,
                "real": real,
                "published_set": set_version,
                "prices": dict(PRICES_AFTER),
                **applied,
            }
        )
        self.progress(
            f"  {local_time(self.clock.now_ms())} settings set {applied['set']} in force "
            f"{applied['wait_real_s']:.1f} real s after publication"
        )

    def _publish_revocation(self) -> None:
        """County IT revokes one credential and one card (token-format.md §5 entries) through
        the signed revocation shards; the daemon applies them between two decisions."""
        entries = [
            *(credential_revocation(self.plan.cast.cadre(s).wallet) for s in self.plan.revoke_subs),
            *({"kind": "card", "uid": u} for u in self.plan.revoke_uids),
        ]
        (self.out / "published-revocations.json").write_text(
            json.dumps(entries, indent=1), encoding="utf-8"
        )
        set_version, sim_ms, real, count = self._publish(
            lambda repo, now: repo.revoke(entries, now)
        )
        self.progress(
            f"  {local_time(sim_ms)} revocation published ({len(entries)} new, {count} in "
            f"all), update set {set_version}"
        )
        applied = self._wait_applied(set_version, "the revocation")
        self.model.publish(self.plan.revoke_subs, self.plan.revoke_uids)
        self.record.events.append(
            {
                "kind": REVOCATION,
                "sim_ms": sim_ms,
                "real": real,
                "published_set": set_version,
                "entries": len(entries),
                "revocations": count,
                **applied,
            }
        )
        self.progress(
            f"  {local_time(self.clock.now_ms())} revocation set {applied['set']} in force "
            f"{applied['wait_real_s']:.1f} real s after publication"
        )

    # -- one presentation --

    def _present(self, a: Arrival) -> None:
        term = self._holder["terminal"]
        code_age: float | None = None
        chain: str | None = None
        if a.method == "qr":
            if a.kind == "replay":
                assert a.ref is not None and a.ref in self._texts
                text, t, out_of_view = self._texts[a.ref]
                # The camera ignores a text seen again within same_text_s of its last sighting.
                time.sleep(max(0.0, out_of_view + SAME_TEXT_S + 0.3 - time.time()))
            else:
                t = self.clock.now_s()
                text = code_text(self.plan, a, t, self.opts.seed)
            answer = self.camera.show(text, wait=True, timeout_s=60)
            shown = float(answer["started_at"])
            self._texts[a.n] = (text, t, shown + self.opts.hold_s)
            code_age = (self.clock.of_real(shown) - t * 1000) / 1000
            marks = qr_marks(text, self._wallet_of(a))
            chain = code_chain(text)
        else:
            uid = (
                self.plan.cast.unknown_uids[a.who]
                if a.kind == "unknown_card"
                else self.plan.cast.cadre(a.who).card_uid
            )
            assert uid is not None
            shown = time.time()
            self.reader.swipe(uid)
            marks = {("credential", card_ref(uid))}
        offline = self.county.partitioned
        if offline:
            with self._offline:
                self._offline_count += 1
                self._offline.notify_all()
        expected = self.model.expect(a, code_age)
        row: dict[str, Any] = {
            "n": a.n,
            "kind": a.kind,
            "method": a.method,
            "who": a.who,
            "ref": a.ref,
            "planned_sim_ms": self.opened_ms + int(a.at_s * 1000),
            "presented_sim_ms": self.clock.of_real(shown),
            "presented_real": shown,
            "code_age_s": code_age,
            "chain": chain,
            "offline": offline,
            "expected_verdict": expected.verdict,
            "expected_reason": expected.reason,
            "expected_amount_fen": expected.amount_fen,
            "expected_also": list(expected.also),
            "unit": unit_of(self.plan, a),
            "expected_tier": expected.tier,
            "seq": None,
            "verdict": None,
            "reason": None,
            "amount_fen": None,
            "decision_method": None,
            "latency_ms": None,
        }
        got = self._decision_for(term, a.n, marks, timeout_s=10.0)
        if got is not None:
            arrived, view = got
            row.update(
                seq=view.get("seq"),
                verdict=view.get("verdict"),
                reason=view.get("reason"),
                amount_fen=view.get("amount_fen"),
                decision_method=view.get("method"),
                latency_ms=round((arrived - shown) * 1000, 1),
                decided_sim_ms=self.clock.of_real(arrived),
            )
        self.record.presentations.append(row)

    def _wallet_of(self, a: Arrival) -> Wallet | None:
        """The real wallet behind a QR presentation (None for outsiders and forgeries)."""
        if a.kind in ("forged_key", "expired", "forged_credential"):
            return None
        return self.plan.cast.cadre(a.who).wallet

    def _decision_for(
        self, term: RunningTerminal, n: int, marks: set[tuple[str, str]], timeout_s: float
    ) -> tuple[float, dict[str, Any]] | None:
        """The decision the terminal made for presentation ``n``: the next one on the screen
        stream whose ledger entry carries one of the presentation's ``marks`` (the code's
        text or digest, the credential, the card). Any other decision that comes meanwhile
        (a code the camera misread, a swipe nobody made) is recorded as one no presentation
        asked for, so that one stray verdict is one failure and does not shift the rest."""
        assert term.stream is not None
        deadline = time.monotonic() + timeout_s
        while True:
            got = term.stream.wait_for(term.read_index, max(0.0, deadline - time.monotonic()))
            if got is None:
                return None
            term.read_index += 1
            seq = got[1].get("seq") or 0
            if seq <= self._last_seq:  # a screen that connects is shown the last verdict again
                continue
            self._last_seq = seq
            entry = _read_entry(term, seq)
            if entry is not None and entry_marks(entry) & marks:
                return got
            self.record.extra_decisions.append({"real": got[0], **got[1], "while_presenting": n})

    def _collect_unmatched(self, term: RunningTerminal) -> None:
        if term.stream is None:
            return
        for arrived, view in term.stream.decisions[term.read_index :]:
            if (view.get("seq") or 0) > self._last_seq:
                self.record.extra_decisions.append({"real": arrived, **view})
        term.read_index = len(term.stream.decisions)

    # -- after the last cadre --

    def _drain(self, monitor: Monitor) -> None:
        """Wait until the county holds everything the terminal wrote (or 60 real seconds)."""
        term = self._holder["terminal"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = term.daemon.worker.snapshot
            last = snap.get("last_seq") or 0
            if snap.get("unsynced") == 0 and monitor.county_acked() >= last:
                self._event("drained", last_seq=last)
                return
            time.sleep(0.2)
        self.record.problems.append(
            "the terminal's backlog did not reach the county within 60 s after the last cadre"
        )

    def _final_sync(self, state_dir: Path) -> None:
        """Entries written while the daemon stopped (none expected) are uploaded once more,
        without touching the ledger, so the county comparison covers the whole ledger."""
        from terminal import config, sync
        from terminal.link.provision import load_identity

        identity = load_identity(state_dir)
        client = sync.SyncClient(
            state_dir / "ledger.sqlite",
            identity,
            config.SyncSettings(deadline_s=10, connect_timeout_s=3, read_timeout_s=5),
            wall_ms=self.clock.now_ms,
        )
        result = client.sync_once(time.monotonic() + 10)
        if not result.complete:
            self.record.problems.append(f"the final sync did not complete: {result.error}")

    def _collect(self, state_dir: Path) -> None:
        import io

        from terminal import ledger

        book = state_dir / "ledger.sqlite"
        report = ledger.verify_file(book)
        self.record.ledger_verify = {
            "ok": report.ok,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "problem": report.problem,
        }
        out = io.StringIO()
        ledger.export_file(book, "jsonl", out)
        self.record.ledger_entries = [json.loads(line) for line in out.getvalue().splitlines()]
        self.record.county_entries = list(self.county.store.iter_entries(TERMINAL_ID))
        start = next((e for e in self.record.events if e["kind"] == OUTAGE_START), None)
        end = next((e for e in self.record.events if e["kind"] == OUTAGE_END), None)
        if start is not None and end is not None:
            self.record.outage = {
                "start_sim_ms": start["sim_ms"],
                "end_sim_ms": end["sim_ms"],
                "start_real": start["real"],
                "end_real": end["real"],
                "last_seq_at_end": end.get("last_seq"),
            }


def _read_entry(term: RunningTerminal, seq: int) -> LedgerEntry | None:
    """Entry ``seq`` as the decision worker sees it (read between two decisions)."""
    found: LedgerEntry | None = term.daemon.worker.call(lambda c: c.ledger.entry(seq))
    return found


def play(
    opts: Options, progress: Callable[[str], None] = print
) -> tuple[RunRecord, list[str], str]:
    """Run the lunch, check it, draw the chart, write report.txt: (record, failures, report)."""
    record = Lunch(opts, progress).run()
    failures = report.check(record)
    chart = report.draw_chart(record, Path(opts.out) / "lunch-rush.png")
    text = report.report_text(record, failures, chart)
    (Path(opts.out) / "report.txt").write_text(text + "\n", encoding="utf-8")
    return record, failures, text
