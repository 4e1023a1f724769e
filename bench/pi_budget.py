"""On a Pi's budget: the real daemon under a CPU quota, a memory limit and slow fsync.

    sudo .venv/bin/python bench/pi_budget.py [--only NAME] [--codes 15] [--idle-s 6]
        [--full-lunch] [--json FILE]

Needs root (it makes cgroups) and a C compiler (Debian's cc). Each setting below
stands for a Raspberry Pi; each is run twice, and the same is run without limits
first, in the same run, as the reference:

- the daemon alone (`canteen-terminal run`, its own process, the whole process
  inside the setting's cgroups), reading hw-sim's camera at 15 fps
  and 1280x720 (the terminal's default capture): frame to page over --codes phones
  (from the first frame a decoder can read, as bench/daemon.py), then the daemon idle
  for --idle-s with the camera running: CPU as a share of the quota, peak RSS;
- `hw-sim scenario lunch-rush --short` (40 presentations, an outage, two signed
  updates; --full-lunch adds the 300-presentation lunch at the target setting), in a
  child process. The scenario runs the daemon in one of its threads (it reads the
  worker's queue and ledger in process), so here the daemon's thread joins the
  setting's CPU cgroup before it starts anything, and every thread it starts
  inherits that (cgroup v1 places threads; the simulators, the county
  and the scenario stay outside, as they are not on a terminal). They still share
  the interpreter's lock with the daemon, so this is slightly harsher than a Pi. Memory
  cannot be limited per thread: the limit covers the whole lunch process (daemon,
  camera and reader simulators, county server), stricter than the daemon alone.
  Printed: frame to screen p50/p99 (phones, from the first readable frame; cards,
  swipe to screen), presentations decided, without a verdict, and refused for
  capacity (events dropped on a full queue), the deepest queue seen, whether every
  check of the scenario passed.

How each limit is made (cgroup v1, as on these machines: `cpu`, `cpuacct` and
`memory` controllers; the cgroups are made under this process's own and removed at
the end):
- CPU: `cpu.cfs_quota_us` over a 10 ms `cpu.cfs_period_us` (the default 100 ms
  period would let the daemon run at full speed for 20 ms and then stop it for 80,
  which is not what a slower core does);
- memory: `memory.limit_in_bytes`;
- slow durable writes: an LD_PRELOAD shim (C, written and compiled with `cc` by this
  bench in a temporary folder) delays each fsync() and fdatasync() on a file under the
  terminal's state directory by the setting's milliseconds, then does the real one:
  SQLite's commits of ledger.sqlite and trust.sqlite and terminal/durable.py's writes
  all pass there. The bench checks the shim on a file of its own first.

Which Pi each setting stands for: single-thread speed, from published single-core
scores (approximate, not measured here): a core of this 2-core x86-64 VM is about
1.0, a Pi 5 core (Cortex-A76, 2.4 GHz) about 0.6, a Pi 4 core (Cortex-A72, 1.5-1.8
GHz) about 0.25, a Pi 3 B+ or Zero 2 W core (Cortex-A53) about 0.1. The daemon's
work is mostly one thread (the decision worker, or the camera's decode), so a quota
of one Pi core's speed is the fair stand-in, with Chromium on the other cores.
fsync: 2 ms for a good A2 SD card or a USB SSD, 5 ms a common A1 card, 10 ms a slow
or worn card. 768 MB: a 1 GB Pi less the kiosk's Chromium.

Targets (issue 18), at the target setting (0.2 core, 768 MB, 10 ms fsync): frame to
screen p99 < 300 ms; zero presentations lost (each decided, none dropped); daemon
idle CPU < 30% of the quota; daemon RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hw-sim"), str(ROOT / "tests"), str(ROOT / "bench")]

PERIOD_US = 10_000


@dataclass(frozen=True)
class Setting:
    name: str
    cpu: float | None  # cores of this machine; None: no quota
    mem_mb: int | None
    fsync_ms: float
    stands_for: str


SETTINGS = (
    Setting("none", None, None, 0, "this VM: 2 x86-64 cores, a fast disk (the reference)"),
    Setting("1.0/2ms", 1.0, 768, 2, "more than any Pi: a core of this VM, a USB SSD"),
    Setting("0.5/5ms", 0.5, 768, 5, "a Pi 5 (A76) with a common A1 card"),
    Setting("0.25/10ms", 0.25, 768, 10, "a Pi 4 (A72) with a slow card"),
    Setting("0.2/10ms", 0.2, 768, 10, "the target: a slow Pi 4, or Chromium taking a share"),
)
TARGET = "0.2/10ms"

SHIM_C = r"""
/* Delays fsync() and fdatasync() on files under $PI_FSYNC_PREFIX by $PI_FSYNC_DELAY_US. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void slow(int fd) {
    const char *us = getenv("PI_FSYNC_DELAY_US");
    const char *prefix = getenv("PI_FSYNC_PREFIX");
    long delay = us ? atol(us) : 0;
    if (delay <= 0) return;
    if (prefix && *prefix) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n < 0) return;
        path[n] = 0;
        if (strncmp(path, prefix, strlen(prefix)) != 0) return;
    }
    struct timespec ts = {delay / 1000000, (delay % 1000000) * 1000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow(fd);
    return real(fd);
}
"""


def build_shim(folder: Path) -> Path:
    """Compile the fsync shim and check that it delays what it should and nothing else."""
    src = folder / "slow_fsync.c"
    lib = folder / "slow_fsync.so"
    src.write_text(SHIM_C, encoding="utf-8")
    subprocess.run(
        ["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"],
        check=True,
    )
    probe = (
        "import os,sys,time,sqlite3\n"
        "def t(p):\n"
        " fd=os.open(p,os.O_WRONLY|os.O_CREAT)\n"
        " s=time.perf_counter()\n"
        " for _ in range(5): os.write(fd,b'x'); os.fsync(fd)\n"
        " os.close(fd); return (time.perf_counter()-s)/5*1000\n"
        "c=sqlite3.connect(sys.argv[1]+'/in/db.sqlite'); c.execute('PRAGMA journal_mode=WAL')\n"
        "c.execute('PRAGMA synchronous=FULL'); c.execute('CREATE TABLE IF NOT EXISTS t(x)')\n"
        "s=time.perf_counter()\n"
        "for i in range(5):\n"
        " c.execute('INSERT INTO t VALUES (?)',(i,)); c.commit()\n"
        "sq=(time.perf_counter()-s)/5*1000\n"
        "print(t(sys.argv[1]+'/in/f'), t(sys.argv[1]+'/out'), sq)\n"
    )
    (folder / "in").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "LD_PRELOAD": str(lib),
        "PI_FSYNC_DELAY_US": "20000",
        "PI_FSYNC_PREFIX": str(folder / "in"),
    }
    out = subprocess.run(
        [sys.executable, "-c", probe, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    inside, outside, sqlite_commit = (float(x) for x in out.stdout.split())
    if not (inside >= 19 and outside < 10 and sqlite_commit >= 19):
        raise SystemExit(
            f"the fsync shim does not work here (fsync inside {inside:.1f} ms, outside "
            f"{outside:.1f} ms, SQLite commit {sqlite_commit:.1f} ms; 20 ms asked)"
        )
    print(
        f"fsync shim: 20 ms asked; fsync under the prefix {inside:.1f} ms, elsewhere "
        f"{outside:.1f} ms, a SQLite WAL commit {sqlite_commit:.1f} ms",
        flush=True,
    )
    return lib


def fsync_env(lib: Path, setting: Setting, state_dir: Path) -> dict[str, str]:
    if setting.fsync_ms <= 0:
        return {}
    return {
        "LD_PRELOAD": str(lib),
        "PI_FSYNC_DELAY_US": str(int(setting.fsync_ms * 1000)),
        "PI_FSYNC_PREFIX": str(state_dir.resolve()),
    }


class Cgroups:
    """cgroup v1 cpu, cpuacct and memory groups for one setting, under this process's own."""

    CONTROLLERS = ("cpu", "cpuacct", "memory")

    def __init__(self, tag: str, setting: Setting) -> None:
        own: dict[str, str] = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(","):
                own[name] = path
        self.dirs: dict[str, Path] = {}
        for ctrl in self.CONTROLLERS:
            base = Path("/sys/fs/cgroup") / ctrl
            if ctrl not in own or not (base / "tasks").exists():
                raise SystemExit(
                    f"no cgroup v1 {ctrl} controller at {base}: this bench needs cgroup v1 "
                    "cpu, cpuacct and memory (see /proc/self/cgroup), and root"
                )
            d = base / own[ctrl].lstrip("/") / f"pi-budget-{os.getpid()}-{tag}"
            d.mkdir(exist_ok=True)
            self.dirs[ctrl] = d
        (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        quota = -1 if setting.cpu is None else int(setting.cpu * PERIOD_US)
        (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        limit = -1 if setting.mem_mb is None else setting.mem_mb * 1024 * 1024
        (self.dirs["memory"] / "memory.limit_in_bytes").write_text(str(limit))

    def join_process(self, pid: int = 0, memory: bool = True, cpu: bool = True) -> None:
        for ctrl, d in self.dirs.items():
            if (ctrl == "memory" and memory) or (ctrl != "memory" and cpu):
                (d / "cgroup.procs").write_text(str(pid or os.getpid()))

    def cpu_paths(self) -> tuple[str, str]:
        return str(self.dirs["cpu"]), str(self.dirs["cpuacct"])

    def cpu_s(self) -> float:
        return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9

    def memory_peak_mb(self) -> float:
        return int((self.dirs["memory"] / "memory.max_usage_in_bytes").read_text()) / 2**20

    def memory_failures(self) -> int:
        return int((self.dirs["memory"] / "memory.failcnt").read_text())

    def remove(self) -> None:
        for ctrl, d in self.dirs.items():
            parent = d.parent
            for _ in range(50):
                pids = (d / "cgroup.procs").read_text().split()
                for pid in pids:  # a straggler goes back where it came from
                    with contextlib.suppress(OSError):
                        (parent / "cgroup.procs").write_text(pid)
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                print(f"left {d} behind (busy)", file=sys.stderr)
            del ctrl


def vm_hwm_mb(pid: int) -> float:
    """Peak RSS of one process (VmHWM), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


# --- the daemon alone -----------------------------------------------------------------------


def daemon_alone(
    setting: Setting, lib: Path, tmp: Path, codes: int, idle_s: float
) -> dict[str, Any]:
    import daemon as bench_daemon  # bench/daemon.py
    from hwsim import population as pop
    from hwsim.camera import CameraSim
    from hwsim.scenario.canteen import ScreenStream

    from terminal.service import daemon

    run = tmp / "alone"
    run.mkdir()
    now = int(time.time())
    population = pop.make_population(
        now=now - 3600, cadres=codes, units=["own"], cards_fraction=0.0, seed="pi-budget"
    )
    bench_daemon.install(population, run / "population", run / "state", now)
    groups = Cgroups("alone", setting)
    camera = CameraSim(port=0, fps=15, hold_s=0.8, gap_s=0.4, lifetime_s=3600).start()
    proc = None
    try:
        proc, screen = bench_daemon.start_daemon(
            run,
            camera.url,
            "zxing",
            env=fsync_env(lib, setting, run / "state"),
            preexec=lambda: groups.join_process(),
        )
        stream = ScreenStream(screen, timeout_s=60)
        latencies = []
        for cadre in population.cadres:
            seen = len(stream.decisions)
            answer = camera.show(cadre.wallet.draw(int(time.time())), wait=True)
            got = stream.wait_for(seen, 15)
            readable = camera.readable_at(int(answer["show"]))
            if got is not None and readable is not None:
                latencies.append((got[0] - readable) * 1000)
        stream.close()
        time.sleep(2)  # the last phone leaves; past its verdict
        c0, t0 = groups.cpu_s(), time.monotonic()
        time.sleep(idle_s)
        idle = (groups.cpu_s() - c0) / (time.monotonic() - t0)
        health = daemon.ask_status(run / "state")
        rss = vm_hwm_mb(proc.pid) + sum(vm_hwm_mb(c) for c in children(proc.pid))
        return {
            "frame_to_page_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99)},
            "decided": len(latencies),
            "codes": codes,
            "dropped": health.get("dropped_events", 0),
            "idle_cpu_share": idle / (setting.cpu or 1.0),
            "rss_peak_mb": rss,
            "cgroup_memory_peak_mb": groups.memory_peak_mb(),
        }
    finally:
        if proc is not None:
            bench_daemon.stop(proc)
        camera.stop()
        groups.remove()


# --- the lunch ------------------------------------------------------------------------------


def lunch(setting: Setting, lib: Path, tmp: Path, full: bool) -> dict[str, Any]:
    out = tmp / ("lunch-full" if full else "lunch")
    groups = Cgroups("lunch", setting)
    result = tmp / "lunch-result.json"
    try:
        cpu_dir, acct_dir = groups.cpu_paths()
        cmd = [sys.executable, __file__, "--lunch-child", str(out), cpu_dir, acct_dir, str(result)]
        if full:
            cmd.append("--full-lunch")
        env = {**os.environ, **fsync_env(lib, setting, out / "state")}
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}"
        done = subprocess.run(
            cmd,
            env=env,
            cwd=ROOT,
            preexec_fn=lambda: groups.join_process(cpu=False),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0 or not result.exists():
            return {"error": (done.stderr or done.stdout)[-600:]}
        figures: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        figures["daemon_cpu_share"] = figures.pop("daemon_cpu_s") / (
            figures["real_seconds"] * (setting.cpu or 1.0)
        )
        figures["memory_failures"] = groups.memory_failures()
        return figures
    finally:
        groups.remove()


def lunch_child(out: Path, cpu_dir: str, acct_dir: str, result: Path, full: bool) -> int:
    """In the child: the scenario, with the daemon's thread in the CPU cgroups."""
    from hwsim import camera as hcam
    from hwsim import scenario, scenario_report

    shows: dict[float, float] = {}  # started_at -> readable_at, per phone shown
    daemons: list[Any] = []

    class Camera(hcam.CameraSim):
        def show(self, text: str, **kw: Any) -> dict[str, Any]:
            answer = super().show(text, **kw)
            number = int(answer["show"])

            def note() -> None:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    readable = self.readable_at(number)
                    if readable is not None:
                        shows[float(answer["started_at"])] = readable
                        return
                    time.sleep(0.005)

            threading.Thread(target=note, daemon=True).start()
            return answer

    class Terminal(scenario.RunningTerminal):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            run = self.thread._target  # type: ignore[attr-defined]
            daemons.append(self.daemon)

            def in_quota(**kwargs: Any) -> Any:
                tid = str(threading.get_native_id())
                for d in (cpu_dir, acct_dir):
                    Path(d, "tasks").write_text(tid)
                return run(**kwargs)

            self.thread._target = in_quota  # type: ignore[attr-defined]

    hcam.CameraSim = Camera  # type: ignore[misc]
    scenario.RunningTerminal = Terminal  # type: ignore[misc]
    opts = scenario.Options(out=out) if full else scenario.Options.shortened(out)
    record, failures, _text = scenario_report.play(opts, lambda _s: None)
    qr, cards = [], []
    for p in record.presentations:
        if p["latency_ms"] is None:
            continue
        if p["method"] == "qr":
            readable = shows.get(float(p["presented_real"]))
            if readable is not None:
                arrived = float(p["presented_real"]) + p["latency_ms"] / 1000
                qr.append((arrived - readable) * 1000)
        else:
            cards.append(float(p["latency_ms"]))
    dropped = 0
    for d in daemons:
        dropped += d.worker.dropped
        for part in (d.camera, d.reader):
            if part is not None:
                dropped += part.health().counters.get("queue_full", 0)
    queue = [s["queue"] for s in record.samples if s["queue"] is not None]
    figures = {
        "presentations": len(record.presentations),
        "decided": sum(p["verdict"] is not None for p in record.presentations),
        "dropped": dropped,
        "queue_max": max(queue) if queue else None,
        "qr_ms": {"p50": pct(qr, 50), "p99": pct(qr, 99), "n": len(qr)},
        "card_ms": {"p50": pct(cards, 50), "p99": pct(cards, 99)},
        "checks_failed": failures,
        "real_seconds": record.real_seconds,
        "daemon_cpu_s": int(Path(acct_dir, "cpuacct.usage").read_text()) / 1e9,
        "process_rss_peak_mb": vm_hwm_mb(os.getpid()),
    }
    result.write_text(json.dumps(figures), encoding="utf-8")
    return 0


# --- the table ------------------------------------------------------------------------------


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def show_row(setting: Setting, alone: dict[str, Any] | None, meal: dict[str, Any]) -> None:
    print(f"\n== {setting.name}: {setting.stands_for}", flush=True)
    cpu = "no quota" if setting.cpu is None else f"{setting.cpu:g} core"
    mem = "no limit" if setting.mem_mb is None else f"{setting.mem_mb} MB"
    print(f"   ({cpu}, {mem}, fsync +{setting.fsync_ms:g} ms)")
    a = alone
    if a is None:
        pass  # the full lunch: the daemon alone was measured with the short one
    elif "error" in a:
        print("   daemon alone: failed:", a["error"])
    else:
        f = a["frame_to_page_ms"]
        print(
            f"   daemon alone: frame to page p50 {ms(f['p50'])} ms, p99 {ms(f['p99'])} ms "
            f"({a['decided']}/{a['codes']} decided, {a['dropped']} dropped); idle CPU "
            f"{a['idle_cpu_share'] * 100:.1f}% of the quota; peak RSS {a['rss_peak_mb']:.0f} MB "
            f"(cgroup, page cache included: {a['cgroup_memory_peak_mb']:.0f} MB)"
        )
    m = meal
    if "error" in m:
        print("   lunch: failed:", m["error"])
        return
    q, c = m["qr_ms"], m["card_ms"]
    checks = (
        "all checks pass" if not m["checks_failed"] else f"{len(m['checks_failed'])} checks fail"
    )
    print(
        f"   lunch ({m['presentations']} presentations, {m['real_seconds']:.0f} s): frame to "
        f"screen p50 {ms(q['p50'])} ms, p99 {ms(q['p99'])} ms (cards {ms(c['p50'])}/"
        f"{ms(c['p99'])} ms); decided {m['decided']}, no verdict "
        f"{m['presentations'] - m['decided']}, refused for capacity {m['dropped']}; queue "
        f"depth max {m['queue_max']}; daemon CPU {m['daemon_cpu_share'] * 100:.0f}% of the "
        f"quota; lunch process peak RSS {m['process_rss_peak_mb']:.0f} MB (with simulators), "
        f"memory limit hits {m['memory_failures']}; {checks}",
        flush=True,
    )
    for failure in m["checks_failed"][:3]:
        print("     check failed:", failure[:200])


def judge(name: str, alone: dict[str, Any], meal: dict[str, Any]) -> None:
    from figures import report

    p99s = [
        x
        for x in (
            alone.get("frame_to_page_ms", {}).get("p99"),
            meal.get("qr_ms", {}).get("p99"),
            meal.get("card_ms", {}).get("p99"),  # swipe to screen
        )
        if x is not None
    ]
    p99 = max(p99s) if p99s else float("inf")
    report(
        f"{name} frame to screen p99",
        p99,
        "ms",
        "worst of the daemon alone, the lunch's phones and its cards",
        "< 300 ms",
        p99 < 300,
    )
    lost = (alone.get("codes", 0) - alone.get("decided", 0)) + alone.get("dropped", 0)
    lost += meal.get("presentations", 0) - meal.get("decided", 0) + meal.get("dropped", 0)
    ok_lost = "error" not in alone and "error" not in meal
    report(
        f"{name} presentations lost",
        lost,
        "",
        "daemon alone and lunch",
        "0",
        ok_lost and lost == 0,
        digits=0,
    )
    idle = alone.get("idle_cpu_share", float("inf")) * 100
    report(
        f"{name} idle CPU",
        idle,
        "% of the quota",
        "camera at 15 fps, 1280x720",
        "< 30%",
        idle < 30,
        digits=1,
    )
    rss = alone.get("rss_peak_mb", float("inf"))
    report(
        f"{name} daemon peak RSS",
        rss,
        "MB",
        "the daemon's process",
        "< 200 MB",
        rss < 200,
        digits=0,
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--lunch-child":
        out, cpu_dir, acct_dir, result = sys.argv[2:6]
        return lunch_child(Path(out), cpu_dir, acct_dir, Path(result), "--full-lunch" in sys.argv)
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [s.name for s in SETTINGS]
    ap.add_argument(
        "--only", action="append", choices=names, help="run only these settings (and none)"
    )
    ap.add_argument("--codes", type=int, default=15, help="phones shown to the daemon alone")
    ap.add_argument("--idle-s", type=float, default=6.0, help="seconds of idle measurement")
    ap.add_argument(
        "--full-lunch", action="store_true", help="also the 300-presentation lunch at the target"
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    ap.add_argument(
        "--keep",
        metavar="DIR",
        help="run in DIR (made if missing) and keep it: each lunch's report.txt, run.json "
        "and daemon.log",
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/pi_budget.py needs root: it makes cgroups", file=sys.stderr)
        return 2
    chosen = [s for s in SETTINGS if s.name == "none" or not a.only or s.name in a.only]
    print(
        f"bench/pi_budget.py on {os.cpu_count()} cores; cgroup v1, "
        f"CPU period {PERIOD_US // 1000} ms",
        flush=True,
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pi-budget-") as t:
        tmp = Path(a.keep) if a.keep else Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        lib = build_shim(tmp)
        for setting in chosen:
            run = tmp / setting.name.replace("/", "-")
            run.mkdir()
            try:
                alone = daemon_alone(setting, lib, run, a.codes, a.idle_s)
            except Exception as exc:  # one setting failing must not lose the others
                alone = {"error": f"{type(exc).__name__}: {exc}"[-600:]}
            meal = lunch(setting, lib, run, full=False)
            show_row(setting, alone, meal)
            results[setting.name] = {"setting": vars(setting), "alone": alone, "lunch": meal}
            if a.full_lunch and setting.name == TARGET:
                full = lunch(setting, lib, run, full=True)
                show_row(setting, None, full)
                results[setting.name]["full_lunch"] = full
        print()
        for setting in chosen:
            r = results[setting.name]
            judge(setting.name, r["alone"], r["lunch"])
            if "full_lunch" in r:
                judge(f"{setting.name} full lunch", r["alone"], r["full_lunch"])
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
