"""herald bench: every figure of the benchmark issue, measured on one broker in one run.

What it measures, in this order (each phase prints its time; the whole default run aims at 15 minutes):

  1. stack        Kafka, the registry and PostgreSQL at the HERALD_* addresses; whatever does not
                  answer is started here as a local process (as `herald up` does) and stopped at the end.
  2. workload     --events NotificationEvents over --users users (LOW 50%, NORMAL 35%, HIGH 10%,
                  CRITICAL 5%; 10% duplicates; no preference records unless --preferences-share),
                  generated in memory before any clock starts, then produced once to one topic that 3-5 all read.
  3. ceiling      passthrough_events_per_s: confluent-kafka consume -> produce of the same bytes.
  4. peer         quix_events_per_s: Herald's job for users with no preference record in Quix Streams
                  (dedup, routing per channel, rate limits, batch and digest windows, a decision per event
                  and the delivery requests; bench/peers/quix_peer.py), as many processes as Herald has
                  workers (its own venv, made on first use: a minute or two once); with a budget it gets
                  5% of what is left (at least 45 s) and its rate is over the events it decided. The
                  results say whether both sides made the same decisions.
  5. pipeline     pipeline_events_per_s: Herald workers (`python -m streams.cli worker`, one per core, or
                  --workers; without standby replicas unless HERALD_STANDBY_REPLICAS says otherwise: they
                  share one machine) started on the workload's topics once they are full; the rate at which events
                  get their first decision, between 10% and 90% of them (start-up is not counted), overall,
                  and per worker.
  6. critical     critical_p50/p95/p99_ms: a mixed stream at half Herald's measured rate; after a
                  warm-up (5 s, 1 s with --quick; not timed: on a broker started minutes before, a stream's
                  first seconds reach every consumer late, a bare one included), each CRITICAL event carries its send time,
                  and its first delivery record on any delivery topic is timed when a consumer reads it
                  (fresh workers if the pipeline's still have work, the stream started once their group
                  has shared the partitions out). The floor under it,
                  critical_floor_p50/p99_ms: how late a bare consumer in a process of its own reads the same
                  events (bench/broker_lag.py), with the share of the machine's cores busy meanwhile.
  7. digest       digest_s, digests_per_s: --digest-users users' states, each holding one LOW event in one
                  fixed digest period, are computed by the policy's own code and written to the workers'
                  changelog (bench/digest_seed.py: taking a million events in would not fit the budget);
                  the period is made to end after the seeding, start, restore and index, fitted to how
                  fast a sample of 100,000 states seeds first (digest_probe_states_per_s;
                  digest_ready_before_end_s says by how much it did);
                  fresh workers (one per core) restore them (digest_restore_s); then the time from the
                  period's end to the last DIGEST delivery request, with the cores the workers and the
                  broker used meanwhile (digest_workers_cores, digest_broker_cores; the workers' CPU per
                  digest: digest_worker_cpu_us_per_digest). worker_rss_mb and worker_state_users:
                  those workers' RSS, summed, once every user's state is loaded and indexed.
  8. recovery     recovery_s: kill -9 of those workers with a stream going on, new ones started at once
                  on the same disks; the time from the kill to the first decision they write.
  9. api          unread_p50_ms, unread_p99_ms: `herald api` under a fixed 5,000 requests/s (open loop).

Then it writes bench/results/bench-<run>.json and bench/results/latest.json (every figure, the ratios
Herald/ceiling and Herald/Quix, the machine, load before and after, timestamps, git commit),
BENCHMARKS.md (each figure beside its target in bench/targets.py) and bench/results/chart.png (needs
matplotlib: `.venv/bin/pip install -e '.[bench]'`; without it everything else is still written).

How long: about 15 minutes by default on a 2-core machine when Herald is fast enough; the phases that
depend on Herald's speed are cut to fit --budget-min and say so in the results: the pipeline phase stops
after its share of the budget (the rate is then over the events decided), and the digest phase seeds only
as many users as it can restore and release within what is left. --quick is a one-minute smoke run.

Two more phases run on their own, each with its own --help:
  herald bench sinks    each sink process's rate to the local SMTP catcher and provider sandbox, against a
                        bare provider loop (aiosmtplib / aiohttp, no Herald) in the same run (bench/sinks.py)
  herald bench ws       20,000 WebSockets, fan-out latency from herald.delivery.websocket to the frame,
                        preferences PUT->GET and the inbox list under load (bench/ws.py)

examples:
  herald bench                                   # the full run, ~15 minutes
  herald bench sinks --count 5000                # the sinks' phase alone
  herald bench ws --connections 20000 --rate 1000 --duration 20
  herald bench --quick                           # smoke run: small numbers, ~1 minute
  herald bench --events 200000 --digest-users 100000 --skip-peer
  herald bench --quick --out /tmp/b              # results, BENCHMARKS.md and chart in /tmp/b
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.undecided import _long  # the Avro long reader the tap shares with it
from infra.common import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"
MARKDOWN = REPO_ROOT / "BENCHMARKS.md"
SENT_KEY = "bench_sent_ns"
DELIVERY_CHANNELS = ("push", "sms", "email", "inapp", "websocket")
WAIT_METRIC = "herald_worker_critical_wait_seconds"  # the workers' own share of a CRITICAL event's latency
# Rough rates of the digest phase with two workers on a 2-core machine, to fit the phase in the budget before
# it starts (the results hold the real ones; a machine whose sample seeds slower is given proportionally more).
SEED_PER_S, RESTORE_PER_S, INDEX_PER_S, DIGEST_PER_S = 40_000, 20_000, 100_000, 11_000
DIGEST_S_PER_USER = 1 / SEED_PER_S + 1 / RESTORE_PER_S + 1 / INDEX_PER_S + 1 / DIGEST_PER_S
# The period must end after the seeding, the workers' start, their restore and their index. Restoring and
# indexing took at most these multiples of the seeding's time on every machine measured (BENCHMARKS.md),
# which a seeded sample measures on this one just before the period is chosen.
RESTORE_PER_SEED, INDEX_PER_SEED = 4.0, 0.5
PROBE_USERS = 100_000
DIGEST_DEDUP_WINDOW_S = 3_600  # longer than the digest phase: no dedup expiry visits every user inside it


# -- options ---------------------------------------------------------------------------------------------

@dataclass
class Options:
    events: int = 1_000_000
    users: int = 100_000
    digest_users: int = 1_000_000
    workers: int = 0  # pipeline workers; 0: one per core (at most 4)
    skip_peer: bool = False
    skip_api: bool = False
    quick: bool = False
    out: Path = RESULTS_DIR
    markdown: Path | None = None
    budget_min: float = 15.0
    latency_s: float = 30.0
    latency_warmup_s: float = 5.0  # the stream's first seconds, not timed (see phase 6 above)
    latency_rate: float | None = None  # events/s of the CRITICAL latency stream; None: half the measured rate
    api_rate: float = 5000.0
    api_duration_s: float = 20.0
    api_warmup_s: float = 5.0
    api_users: int = 5_000
    all_final_wait_s: float = 30.0
    batch_window_s: int = 2
    digest_period_s: int = 10
    seed: int = 1
    preferences_share: float = 0.0  # users with a preferences record: the peer's job is for users with none
    keep: bool = False
    delete_incomplete: bool = False  # delete the topics even of a run with undecided events (kept by default)
    command_line: str = "herald bench"

    def markdown_path(self) -> Path:
        if self.markdown is not None:
            return self.markdown
        return MARKDOWN if self.out.resolve() == RESULTS_DIR.resolve() else self.out / "BENCHMARKS.md"


QUICK = {"events": 5_000, "users": 1_000, "digest_users": 2_000, "latency_s": 4.0, "latency_warmup_s": 1.0,
         "api_duration_s": 5.0,
         "api_warmup_s": 2.0, "api_users": 1_000, "all_final_wait_s": 3.0, "budget_min": 0.0}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="herald bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=None, help="workload events (default 1,000,000; --quick 5,000)")
    p.add_argument("--users", type=int, default=None, help="workload users (default 100,000; --quick 1,000)")
    p.add_argument("--digest-users", type=int, default=None,
                   help="users with a digest due at once (default 1,000,000; --quick 2,000); fewer when Herald "
                        "cannot take them in within the budget (the results say how many)")
    p.add_argument("--workers", type=int, default=0,
                   help="Herald pipeline workers for the throughput, latency and digest phases (default 0: one per "
                        "core, at most 4); the digest phase's memory is theirs summed")
    p.add_argument("--skip-peer", action="store_true", help="do not run the Quix Streams peer (saves its venv and a few minutes)")
    p.add_argument("--skip-api", action="store_true", help="do not measure the unread-count API")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: small numbers, every phase, no budget cuts")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="folder for the JSON and the chart (default bench/results); BENCHMARKS.md goes to the "
                        "repository's root with the default, else into this folder")
    p.add_argument("--markdown", type=Path, default=None, help="where to write BENCHMARKS.md instead")
    p.add_argument("--budget-min", type=float, default=None,
                   help="minutes the whole run may take (default 15; 0: no limit); see 'How long' above")
    p.add_argument("--latency-s", type=float, default=None,
                   help="seconds of the CRITICAL latency stream that are timed, after a warm-up of 5 s (1 s with --quick) (default 30)")
    p.add_argument("--latency-rate", type=float, default=None,
                   help="events/s of the CRITICAL latency stream (default: half the rate the pipeline phase measured); "
                        "fix it to compare two builds at the same load")
    p.add_argument("--api-rate", type=float, default=5000.0, help="unread-count requests per second (default 5,000)")
    p.add_argument("--seed", type=int, default=1, help="the workload's seed (default 1)")
    p.add_argument("--preferences-share", type=float, default=0.0,
                   help="share of the workload's users given a preferences record (default 0: the peer does "
                        "Herald's job for users without one, so with any the two sides no longer do the same job)")
    p.add_argument("--keep", action="store_true", help="keep the benchmark's topics and worker state (default: delete them)")
    p.add_argument("--delete-incomplete", action="store_true",
                   help="delete the topics and worker state even when a phase ended with events undecided (by "
                        "default such a run keeps them for inspection, and names the undecided events)")
    return p


def options_from(argv: list[str]) -> Options:
    args = parser().parse_args(argv)
    opts = Options(**(QUICK if args.quick else {}))
    for name in ("events", "users", "digest_users", "budget_min", "latency_s", "latency_rate"):
        value = getattr(args, name)
        if value is not None:
            setattr(opts, name, value)
    opts.skip_peer, opts.skip_api, opts.quick, opts.keep = args.skip_peer, args.skip_api, args.quick, args.keep
    opts.out, opts.markdown, opts.api_rate, opts.seed = args.out, args.markdown, args.api_rate, args.seed
    opts.preferences_share = min(1.0, max(0.0, args.preferences_share))
    opts.workers = max(0, args.workers)
    opts.delete_incomplete = args.delete_incomplete
    opts.command_line = " ".join(["herald bench", *argv])
    for name in ("events", "users", "digest_users"):
        if getattr(opts, name) < 1:
            raise SystemExit(f"herald bench: --{name.replace('_', '-')} must be at least 1")
    return opts


# -- small helpers -----------------------------------------------------------------------------------------

def now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-p * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def steady_rate(stamps_ms: list[int], low: float = 0.1, high: float = 0.9) -> float | None:
    """Events per second between the ``low`` and ``high`` fractions of ``stamps_ms`` (ascending)."""
    n = len(stamps_ms)
    if n < 20:
        return None
    i, j = int(low * (n - 1)), int(high * (n - 1))
    span = (stamps_ms[j] - stamps_ms[i]) / 1000
    return round((j - i) / span, 1) if span > 0 else None


def round_down_nicely(n: int) -> int:
    """``n`` with two significant digits, rounded down (123,456 -> 120,000)."""
    if n < 100:
        return max(1, n)
    scale = 10 ** (len(str(n)) - 2)
    return n // scale * scale


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count()
    return {"nproc": nproc, "cpu_model": cpu, "memory_gb": memory_gb,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_before": [round(x, 2) for x in os.getloadavg()]}


def git_info() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""
    commit = git("rev-parse", "HEAD").strip()
    # porcelain lines are "XY path": the leading status column may be a space, so nothing is stripped first
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line[3:]]
    return {"commit": commit or None, "branch": git("rev-parse", "--abbrev-ref", "HEAD").strip() or None,
            "dirty": bool(changed) if commit else None, "changed_files": changed}


def rss_of(pid: int) -> dict:
    """RSS and peak RSS (MB) of a process: psutil when installed, else /proc/<pid>/status."""
    try:
        import psutil

        info = psutil.Process(pid).memory_info()
        peak = getattr(info, "peak_wset", None)
        out = {"rss_mb": round(info.rss / 2**20, 1), "how": "psutil"}
        if peak:
            out["peak_mb"] = round(peak / 2**20, 1)
    except ImportError:
        out = {"how": f"/proc/{pid}/status"}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:") and "rss_mb" not in out:
                out["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("VmHWM:"):
                out["peak_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def process_cpu_s(pid: int) -> float:
    """The CPU seconds (user + system, every thread, not its children) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float | None:
    """The share of one core a process used over the next ``seconds`` (from /proc/<pid>/stat), or None."""
    try:
        before = process_cpu_s(pid)
        time.sleep(seconds)
        return round((process_cpu_s(pid) - before) / seconds, 2)
    except (OSError, IndexError, ValueError):
        return None


def _broker_pids() -> list[int]:
    """The local broker's process, as ``infra.kafka`` recorded it ([] for a broker started some other way)."""
    from infra import kafka
    from infra.common import read_pid

    pid = read_pid(kafka.NAME)
    return [] if pid is None else [pid]


class CoresBy:
    """The cores each group of processes used between ``start`` and ``stop`` (``{group: [pid, ...]}``); a
    group with a process gone or unreadable is left out of ``stop``'s answer rather than undercounted."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: pids for name, pids in groups.items() if pids}
        self.before: dict[str, float | None] = {}
        self.cpu_s: dict[str, float] = {}  # each group's CPU seconds between ``start`` and ``stop``, unrounded
        self.started = self.elapsed = 0.0

    def _read(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, pids in self.groups.items():
            try:
                out[name] = sum(process_cpu_s(pid) for pid in pids)
            except (OSError, IndexError, ValueError):
                out[name] = None
        return out

    def start(self) -> None:
        self.before, self.started = self._read(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """Each group's cores, on average since ``start``; ``elapsed`` is then that time in seconds, and
        ``cpu_s`` the groups' CPU seconds."""
        after, self.elapsed = self._read(), time.monotonic() - self.started
        self.cpu_s = {name: now - was for name, was in self.before.items()
                      if was is not None and (now := after.get(name)) is not None}
        return {name: round(cpu / self.elapsed, 2) for name, cpu in self.cpu_s.items() if self.elapsed > 0}


# -- console -------------------------------------------------------------------------------------------------

class Console:
    """Phase messages and progress on stderr (rich), with a plain line every few seconds off a terminal."""

    def __init__(self) -> None:
        from rich.console import Console as RichConsole

        self.rich = RichConsole(stderr=True, highlight=False, soft_wrap=True)
        self.started = time.monotonic()

    def say(self, line: str) -> None:
        """A plain line (brackets in it are text, not markup)."""
        from rich.markup import escape

        self.rich.print(escape(line))

    def mark(self, line: str) -> None:
        """A line with rich markup ([bold], [red], ...)."""
        self.rich.print(line)

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}:{s % 60:02d}"

    @contextmanager
    def meter(self, description: str, total: int, unit: str = "events") -> Iterator[Callable[[int, str], None]]:
        if self.rich.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), console=self.rich,
                                transient=False)
            task = progress.add_task(description, total=total, extra="")
            with progress:
                yield lambda done, extra="": progress.update(task, completed=done, extra=extra)
            return
        last = [time.monotonic()]

        def update(done: int, extra: str = "") -> None:
            if time.monotonic() - last[0] >= 5:
                last[0] = time.monotonic()
                self.say(f"  {description}: {done:,}/{total:,} {unit} {extra}")
        yield update


# -- reading Herald's outputs ------------------------------------------------------------------------------


class Heads:
    """The few leading fields the benchmark needs of Decisions and DeliveryRequests, read straight from the
    Avro bytes (a full decode costs several times more, in the process that shares the CPU with Herald).
    The first record of every schema id is also decoded with ``schemas.codec.Codec`` and compared; an id
    whose records differ (an evolved schema) is read with the Codec from then on."""

    def __init__(self, codec: Any) -> None:
        from schemas.loader import load_schema

        self.codec = codec
        fields = {f["name"]: f["type"] for f in load_schema("Decision")["fields"]}
        self.outcomes: list[str] = fields["outcome"]["symbols"]
        self.deduplicated = self.outcomes.index("DEDUPLICATED")
        kinds = {f["name"]: f["type"] for f in load_schema("DeliveryRequest")["fields"]}["kind"]
        self.kinds: list[str] = kinds["symbols"]
        self.digest = self.kinds.index("DIGEST")
        self._fast: dict[tuple[str, bytes], bool] = {}

    @staticmethod
    def _decision_fast(v: bytes) -> tuple[bytes, int, bool]:
        n, pos = _long(v, 5)
        event_id = v[pos:pos + n]
        n, pos = _long(v, pos + n)  # user_id
        outcome, pos = _long(v, pos + n)
        while True:  # channels: blocks of enum indexes
            count, pos = _long(v, pos)
            if count == 0:
                break
            if count < 0:
                size, pos = _long(v, pos)
                pos += size
                continue
            for _ in range(count):
                _, pos = _long(v, pos)
        branch, pos = _long(v, pos)  # delivery_id: null or string
        if branch == 1:
            n, pos = _long(v, pos)
            pos += n
        n, pos = _long(v, pos)  # reason
        _, pos = _long(v, pos + n)  # at
        return event_id, outcome, v[pos] == 1

    def _trusted(self, kind: str, value: bytes, fast: Callable[[bytes], tuple], slow: Callable[[bytes], tuple]) -> bool:
        key = (kind, value[1:5])
        ok = self._fast.get(key)
        if ok is None:
            try:
                ok = fast(value) == slow(value)
            except Exception:  # noqa: BLE001 - a layout the fast reader does not know
                ok = False
            self._fast[key] = ok
        return ok

    def _decision_slow(self, v: bytes) -> tuple[bytes, int, bool]:
        d = self.codec.decode(v, "Decision")
        return d["event_id"].encode(), self.outcomes.index(d["outcome"]), bool(d["final"])

    def decision(self, v: bytes) -> tuple[bytes, int, bool]:
        """(event_id as bytes, outcome index, final) of a Decision record."""
        if self._trusted("decision", v, self._decision_fast, self._decision_slow):
            return self._decision_fast(v)
        return self._decision_slow(v)

    @staticmethod
    def _kind_fast(v: bytes) -> tuple[int]:
        n, pos = _long(v, 5)
        n, pos = _long(v, pos + n)
        _, pos = _long(v, pos + n)  # channel
        kind, _ = _long(v, pos)
        return (kind,)

    def _kind_slow(self, v: bytes) -> tuple[int]:
        return (self.kinds.index(self.codec.decode(v, "DeliveryRequest")["kind"]),)

    def kind(self, v: bytes) -> int:
        """The DeliveryKind index of a DeliveryRequest record."""
        if self._trusted("kind", v, self._kind_fast, self._kind_slow):
            return self._kind_fast(v)[0]
        return self._kind_slow(v)[0]


class Tap(threading.Thread):
    """A consumer thread on ``topics`` from their beginning or from their current end, handing every batch
    of records, with the time it was read, to ``handle``. ``ready`` is set once it is assigned."""

    def __init__(self, bootstrap: str, topics: list[str], handle: Callable[[list, int], None],
                 from_end: bool = False, wait_s: float = 0.1) -> None:
        super().__init__(daemon=True, name=f"tap-{topics[0]}")
        self.bootstrap, self.topics, self.handle, self.from_end = bootstrap, topics, handle, from_end
        self.wait_s = wait_s  # a batch is handed over after this long even when short: a latency tap's error
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"bench-tap-{uuid.uuid4().hex[:10]}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 100, "queued.min.messages": 200_000,
                             "enable.partition.eof": False})
        try:
            parts = []
            for topic in self.topics:
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                for p in meta.partitions:
                    offset = (consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                              if self.from_end else OFFSET_BEGINNING)
                    parts.append(TopicPartition(topic, p, offset))
            consumer.assign(parts)
            self.ready.set()
            while not self.stopping.is_set():
                batch = consumer.consume(5000, self.wait_s)
                if batch:
                    self.handle([m for m in batch if not m.error()], time.time_ns())
        except BaseException as exc:  # noqa: BLE001 - reported by the phase that reads the tap
            self.error = exc
            self.ready.set()
        finally:
            consumer.close()

    def start_ready(self, timeout: float = 30) -> "Tap":
        self.start()
        if not self.ready.wait(timeout) or self.error:
            raise RuntimeError(f"could not read {self.topics}: {self.error or 'no assignment in time'}")
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)


class BrokerLag:
    """``bench.broker_lag`` in a process of its own on ``topic``: how late a bare consumer sees its records
    (the floor under the CRITICAL figure). ``stop`` returns its summary ({} when it gave none)."""

    def __init__(self, bootstrap: str, topic: str, out: Path, committed: bool, warmup_s: float = 0.0,
                 fetch_wait_ms: int = 100) -> None:
        self.argv = [sys.executable, "-m", "bench.broker_lag", "--bootstrap", bootstrap, "--topic", topic,
                     "--out", str(out), "--warmup-s", str(warmup_s), "--fetch-wait-ms", str(fetch_wait_ms),
                     *(() if committed else ("--read-uncommitted",))]
        self.out = out
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "BrokerLag":
        from bench.broker_lag import READY

        self.out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        line: list[str] = []
        ready = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        ready.start()
        ready.join(timeout)
        if ready.is_alive() or self.proc.poll() is not None or line[0].strip() != READY:
            self.stop()
            raise RuntimeError(f"the bare consumer ({' '.join(self.argv[1:3])}) did not print {READY!r} within {timeout:g} s")
        return self

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> dict:
        if self.is_alive():
            self.proc.terminate()  # type: ignore[union-attr]
            try:
                self.proc.wait(15)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.proc.kill()  # type: ignore[union-attr]
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}


class Decided:
    """Counts the input records Herald has decided, from its decisions topic: each record's first
    decision is the first one for its event_id, or a DEDUPLICATED one for an event_id seen before (a
    producer's retry re-sends the same event_id, and is decided again as a duplicate). Every input has
    exactly one final decision, so ``finals`` counts the inputs that are done. ``first`` keeps each event_id's
    first outcome, to compare with the peer's event by event."""

    def __init__(self, heads: Heads) -> None:
        self.heads = heads
        self.first: dict[bytes, int] = {}
        self.first_ms: list[int] = []
        self.finals = 0
        self.last_final_ms = 0
        self.outcomes: Counter = Counter()

    @property
    def inputs(self) -> int:
        return len(self.first_ms)

    def handle(self, batch: list, read_ns: int) -> None:
        decision, first_of, first_ms, dedup = self.heads.decision, self.first, self.first_ms, self.heads.deduplicated
        for msg in batch:
            event_id, outcome, final = decision(msg.value())
            ts = msg.timestamp()[1]
            if event_id not in first_of:
                first_of[event_id] = outcome
                first_ms.append(ts)
                self.outcomes[outcome] += 1
            elif outcome == dedup:
                first_ms.append(ts)
                self.outcomes[outcome] += 1
            if final:
                self.finals += 1
                if ts > self.last_final_ms:
                    self.last_final_ms = ts


def first_decisions_compared(herald: dict[bytes, int], peer: dict[bytes, int], names: list[str],
                             examples: int = 10) -> dict:
    """Herald's and the peer's first decision of each event both decided, event by event (``herald`` and ``peer``
    map event_id to an outcome's index in ``names``): how many both decided, how many alike, and the others
    counted by "Herald's outcome / the peer's" with a few of their event ids. The two jobs are the same when
    every event both decided was decided alike; comparing shares of outcomes would hide two differences that
    cancel out, and would count the peer's smaller sample against Herald's whole run."""
    both = alike = 0
    differ: Counter = Counter()
    ids: list[str] = []
    for event_id, outcome in peer.items():
        mine = herald.get(event_id)
        if mine is None:
            continue
        both += 1
        if mine == outcome:
            alike += 1
            continue
        differ[f"{names[mine]} / {names[outcome]}"] += 1
        if len(ids) < examples:
            ids.append(event_id.decode(errors="replace"))
    return {"outputs_events_compared": both, "outputs_events_alike": alike,
            "outputs_differences": dict(differ.most_common()), "outputs_difference_examples": ids}


class Worker:
    """A Herald pipeline worker as a subprocess (its own process group), its log under the bench logs."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name, self.env, self.log = name, env, logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self, timeout: float = 180) -> float:
        """Start it and wait for Faust's "Ready"; the seconds that took."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        self.started = time.monotonic()
        out = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT, env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        out.close()

    def wait_ready(self, timeout: float = 180) -> float:
        """Wait for Faust's "Ready" in the log; the seconds since the launch."""
        assert self.proc is not None
        try:
            return self.wait_for(b"Ready", timeout)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"the {self.name} worker was not ready in {timeout:.0f} s; see {self.log}: {self.tail()}") from None

    def wait_for(self, text: bytes, timeout: float = 180) -> float:
        """Wait until the log shows ``text`` (after the start); the seconds since the start."""
        started = self.started
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.check()
            with open(self.log, "rb") as f:
                f.seek(max(0, seen - len(text)))
                chunk = f.read()
                seen = f.tell()
            if text in chunk:
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"the {self.name} worker's log did not show {text.decode()!r} within {timeout:.0f} s; "
                           f"see {self.log}: {self.tail()}")

    def reading(self) -> list[int] | None:
        """The events partitions the worker's log last said it reads (None: it has not said yet)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return None
        at = text.rfind(READING)
        if at < 0:
            return None
        listed = text[at + len(READING):text.find("]", at)]
        return [int(p) for p in listed.split(",") if p.strip()]

    def tail(self, n: int = 3) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the {self.name} worker exited with code {self.proc.returncode}; see {self.log}: {self.tail()}")

    def kill9(self) -> int:
        """SIGKILL its process group and reap it; the time (epoch ms) right after."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        return now_ms()

    def stop(self, timeout: float = 30) -> None:
        from infra.common import stop_group

        if not self.alive():
            return
        assert self.proc is not None
        stop_group(self.proc, timeout)


READING = "reading partitions ["  # the feed's line at each assignment (streams.feed)


class Crew:
    """Several workers of one app (one per core by default), as one."""

    def __init__(self, members: list[Worker]) -> None:
        self.members = members

    def start(self, timeout: float = 180) -> float:
        """Launch them all at once (one rebalance, not one per member), wait until every one is ready."""
        for member in self.members:
            member.launch()
        return max(member.wait_ready(timeout) for member in self.members)

    def wait_settled(self, partitions: int, timeout: float = 120) -> float:
        """Until the group's assignment is settled: the partitions each member last said it reads (its feed's
        "reading partitions [...]" line) are ``partitions`` in all, none held twice. "Ready" comes before
        the group has balanced the members that joined together, so a stream started then would time
        the rebalance that follows. The seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            self.check()
            held = [member.reading() for member in self.members]
            if all(h is not None for h in held) and sorted(p for h in held for p in h) == list(range(partitions)):
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the workers' partitions did not settle within {timeout:.0f} s: {held}")
            time.sleep(0.1)

    def check(self) -> None:
        for member in self.members:
            member.check()

    def alive(self) -> bool:
        return all(member.alive() for member in self.members)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def kill9(self) -> int:
        """SIGKILL every member; the time (epoch ms) right after."""
        for member in self.members:
            os.killpg(member.proc.pid, signal.SIGKILL)
        for member in self.members:
            member.proc.wait(30)
        return now_ms()

    def wait_for(self, text: bytes, timeout: float = 180) -> float:
        """Until every member's log shows ``text``; the seconds from the start to the last of them."""
        return max(member.wait_for(text, timeout) for member in self.members)

    def rss_mb(self) -> list[float]:
        return [rss_of(pid).get("rss_mb") or 0.0 for pid in self.pids()]

    def pids(self) -> list[int]:
        return [member.proc.pid for member in self.members if member.proc]

    def cpu_share(self, seconds: float) -> float | None:
        """Their summed share of one core over ``seconds`` (measured one after another)."""
        shares = [cpu_share(pid, seconds / len(self.members)) for pid in self.pids()]
        return None if None in shares or not shares else round(sum(shares), 2)


class Stream(threading.Thread):
    """An open-loop stream of the workload's mix at ``rate`` events/s to ``topic`` (event k is sent at
    start + k/rate, late or not), for ``duration`` s or until stopped. Each CRITICAL event sent after the
    first ``warmup_s`` carries its send time, ``data["bench_sent_ns"]`` (``critical`` counts those); each
    event has a new event_id and no dedup_key."""

    def __init__(self, bootstrap: str, codec: Any, topic: str, users: int, user_prefix: str, rate: float,
                 duration: float = 3600, seed: int = 7, tag: str = "s", warmup_s: float = 0.0) -> None:
        super().__init__(daemon=True, name=f"stream-{tag}")
        self.bootstrap, self.codec, self.topic = bootstrap, codec, topic
        self.users, self.user_prefix, self.rate, self.duration = users, user_prefix, rate, duration
        self.warmup_s = warmup_s
        self.rng = random.Random(seed)
        self.tag = f"{tag}{uuid.uuid4().hex[:6]}"
        self.sent = self.critical = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the phase
            self.error = exc

    def _run(self) -> None:
        from confluent_kafka import Producer

        from bench.workload import PRIORITIES, TEXTS, TYPES, _cumulative, _pick

        priorities, types = _cumulative(PRIORITIES), _cumulative(TYPES)
        # linger 5 ms: librdkafka's default (and the Java client's since Kafka 4.0), what producers send with
        # unless tuned; each CRITICAL event's send time is stamped before it, so the figure includes it
        producer = Producer({"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random", "linger.ms": 5,
                             "on_delivery": lambda err, msg: self.errors.append(str(err)) if err else None})
        subject = f"{self.topic}-value"
        rand, randrange = self.rng.random, self.rng.randrange
        start = time.monotonic()
        k = 0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - start >= self.duration:
                break
            due = int((now - start) * self.rate) + 1
            while k < due:
                priority, type_ = _pick(priorities, rand()), _pick(types, rand())
                user = f"{self.user_prefix}{randrange(self.users)}"
                data = {"entity_id": str(k)}
                if priority == "CRITICAL" and now - start >= self.warmup_s:
                    data[SENT_KEY] = str(time.time_ns())
                    self.critical += 1
                event = {"event_id": f"{self.tag}-{k}", "user_id": user, "type": type_, "priority": priority,
                         "title": TEXTS[type_][0], "body": TEXTS[type_][1], "data": data,
                         "occurred_at": now_ms(), "dedup_key": None, "batchable": True, "channels": None,
                         "deliver_after": None, "cancel_key": None}
                producer.produce(self.topic, self.codec.encode(subject, "NotificationEvent", event), user.encode())
                k += 1
                self.sent = k
            producer.poll(0)
            time.sleep(max(0.0, start + k / self.rate - time.monotonic()))
        producer.flush(30)

    def stop(self) -> None:
        self.stopping.set()
        self.join(40)


class Latencies:
    """The first delivery record of each CRITICAL event (the ones carrying their send time), on any
    delivery topic: latency to when the record was read, and to its timestamp (when Herald produced it)."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.read_ms: dict[str, float] = {}
        self.stamp_ms: dict[str, float] = {}
        self.channels: Counter = Counter()

    def handle(self, batch: list, read_ns: int) -> None:
        marker = SENT_KEY.encode()
        for msg in batch:
            value = msg.value()
            if marker not in value:
                continue
            request = self.codec.decode(value, "DeliveryRequest")
            event_id = request["event_ids"][0]
            if event_id in self.read_ms:
                continue
            sent_ns = int(request["data"][SENT_KEY])
            self.read_ms[event_id] = (read_ns - sent_ns) / 1e6
            self.stamp_ms[event_id] = msg.timestamp()[1] - sent_ns / 1e6
            self.channels[request["channel"]] += 1


class Digests:
    """DIGEST delivery requests on a delivery topic: how many, the first and the last timestamps."""

    def __init__(self, heads: Heads) -> None:
        self.heads = heads
        self.count = 0
        self.first_ms = 0
        self.last_ms = 0
        self.other = 0

    def handle(self, batch: list, read_ns: int) -> None:
        kind, digest = self.heads.kind, self.heads.digest
        for msg in batch:
            if kind(msg.value()) != digest:
                self.other += 1
                continue
            ts = msg.timestamp()[1]
            self.count += 1
            self.first_ms = ts if not self.first_ms else min(self.first_ms, ts)
            self.last_ms = max(self.last_ms, ts)


class FirstAfter:
    """The first record timestamped at or after ``after_ms`` (set later, at the kill)."""

    def __init__(self) -> None:
        self.after_ms: int | None = None
        self.first_ms: int | None = None

    def handle(self, batch: list, read_ns: int) -> None:
        if self.after_ms is None:
            return
        for msg in batch:
            ts = msg.timestamp()[1]
            if ts >= self.after_ms and (self.first_ms is None or ts < self.first_ms):
                self.first_ms = ts


# -- the run -------------------------------------------------------------------------------------------------

class PhaseSkipped(Exception):
    """A phase that cannot run (what it needs failed or was skipped); the message says why."""


@dataclass
class Run:
    opts: Options
    console: Console
    run_id: str = ""
    started_at: str = ""
    figures: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    phase_s: dict = field(default_factory=dict)
    phase_load: dict = field(default_factory=dict)
    stack: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)
    threads: list = field(default_factory=list)
    prefixes: list = field(default_factory=list)
    app_ids: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    started_services: list = field(default_factory=list)
    incomplete: list = field(default_factory=list)  # phases that ended with events undecided
    t0: float = 0.0

    # -- bookkeeping

    def left_s(self) -> float:
        """Seconds of the budget left (infinite without a budget)."""
        if not self.opts.budget_min:
            return float("inf")
        return self.opts.budget_min * 60 - (time.monotonic() - self.t0)

    def phase(self, name: str, fn: Callable[[], None], skip_figures: tuple[str, ...] = ()) -> bool:
        from rich.markup import escape

        mark = self.console.mark
        mark(f"[bold]▶ {name}[/bold]  (at {self.console.elapsed()})")
        self.phase_load[name] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
        started = time.monotonic()
        ok = False
        try:
            fn()
            ok = True
        except PhaseSkipped as exc:
            mark(f"  [yellow]skipped: {escape(str(exc))}[/yellow]")
            for key in skip_figures:
                self.skipped.setdefault(key, str(exc))
        except Exception as exc:  # noqa: BLE001 - one failed phase must not lose the others' figures
            message = f"{type(exc).__name__}: {exc}"
            self.errors[name] = message
            mark(f"  [red]failed: {escape(message)}[/red]")
            for key in skip_figures:
                self.skipped.setdefault(key, f"the {name} phase failed ({type(exc).__name__})")
        seconds = round(time.monotonic() - started, 1)
        self.phase_s[name] = seconds
        mark(f"[bold]{'✓' if ok else '✗'} {name}[/bold] {seconds:.1f} s  (total {self.console.elapsed()})")
        return ok

    def settings(self, prefix: str, **overrides: Any) -> Any:
        from herald.settings import Settings

        return Settings.from_env(topic_prefix=prefix, app_id=f"{prefix}pipeline", **overrides)

    def worker_env(self, settings: Any, digest_period_s: int) -> dict[str, str]:
        return {**os.environ, "HERALD_TOPIC_PREFIX": settings.topic_prefix, "HERALD_APP_ID": settings.app_id,
                "HERALD_BATCH_WINDOW_S": str(self.opts.batch_window_s), "HERALD_DIGEST_PERIOD_S": str(digest_period_s),
                # workers on one machine: a standby would only make each apply the other's changes on the same cores
                "HERALD_STANDBY_REPLICAS": os.environ.get("HERALD_STANDBY_REPLICAS", "0"),
                "PYTHONUNBUFFERED": "1"}

    def logs(self) -> Path:
        from infra.common import subdir

        return subdir("bench", "logs", self.run_id)

    def new_worker(self, name: str, env: dict) -> Worker:
        """A worker with its own data folder and static membership name (unless ``env`` names a folder: a
        restart on the same disk, under the same name, as `herald up`'s supervisor restarts its worker)."""
        if not env.get("HERALD_DATA_DIR"):
            env = {**env, "HERALD_DATA_DIR": str(self.data_root() / name),
                   "HERALD_WORKER_INSTANCE_ID": f"{env.get('HERALD_APP_ID', 'bench')}-{name}"}
        worker = Worker(name, env, self.logs())
        self.workers.append(worker)
        return worker

    def worker_count(self) -> int:
        """Herald's pipeline workers (and the peer's processes): ``--workers``, else one per core, at most 4."""
        return self.opts.workers or min(4, os.cpu_count() or 1)

    def new_crew(self, name: str, env: dict) -> Crew:
        count = self.worker_count()
        return Crew([self.new_worker(name if i == 0 else f"{name}-{i + 1}", env) for i in range(count)])

    def data_root(self) -> Path:
        from infra.common import subdir

        return subdir("bench", "data", self.run_id)

    def codec(self) -> Any:
        from herald.settings import Settings
        from schemas.codec import Codec
        from schemas.registry import Registry

        if "codec" not in self.details:
            self.details["codec"] = Codec(Registry(Settings.from_env().schema_registry_url))
        return self.details["codec"]

    # -- phases

    def ensure_stack(self) -> None:
        """Use the servers at the HERALD_* addresses; start, as local processes, the ones that do not answer."""
        from herald.settings import Settings
        from infra import kafka, postgres, registry

        settings = Settings.from_env()
        up = {"postgres": _postgres_answers(settings.database_url), "kafka": _kafka_answers(settings.kafka_bootstrap),
              "registry": _registry_answers(settings.schema_registry_url)}
        self.stack = {"kafka": settings.kafka_bootstrap, "registry": settings.schema_registry_url,
                      "postgres": settings.database_url.rsplit("@", 1)[-1], "answering": dict(up)}
        for name, module in (("postgres", postgres), ("kafka", kafka), ("registry", registry)):
            if up[name]:
                self.console.say(f"  {name}: answering at the HERALD_* address, used as it is")
                continue
            self.console.say(f"  {name}: not answering, starting it (as `herald up` does)")
            status = module.start(progress=lambda line: self.console.say(f"  {line}"))
            self.started_services.append(name)
            self.stack.setdefault("startup_s", {})[name] = status.detail.get("startup_s")
        if up["postgres"] and not self.opts.skip_api:
            postgres.migrate(settings.database_url)  # idempotent, as `herald up` does: the API needs its tables
        self.stack["source"] = ("servers already running" if not self.started_services
                                else f"started here: {', '.join(self.started_services)}")
        self.stack["started"] = list(self.started_services)

    def workload(self) -> None:
        from bench import workload

        prefix = workload.unique_prefix()
        self.prefixes.append(prefix)
        settings = self.settings(prefix)
        self.app_ids.append(settings.app_id)
        figures = workload.run(self.opts.events, self.opts.users, self.opts.seed, settings=settings, progress=True,
                               preferences_share=self.opts.preferences_share)
        self.details["workload_settings"] = settings
        keep = ("topic_prefix", "events_topic", "partitions", "workload_events", "workload_users",
                "workload_originals", "workload_duplicates", "workload_resent_event_ids", "workload_repeated_dedup_keys",
                "workload_priorities", "workload_preferences", "generate_s", "produce_s", "produce_events_per_s")
        self.figures.update({k: figures[k] for k in keep if k in figures})
        self.figures["workload_generate_s"] = self.figures.pop("generate_s", None)
        self.figures["workload_produce_s"] = self.figures.pop("produce_s", None)
        self.figures["workload_produce_events_per_s"] = self.figures.pop("produce_events_per_s", None)

    def _events_topic(self) -> str:
        if "events_topic" not in self.figures:
            raise PhaseSkipped("no workload (its phase failed)")
        return self.figures["events_topic"]

    def passthrough(self) -> None:
        from bench import passthrough

        topic = self._events_topic()
        figures = passthrough.run(topic, self.opts.events, bootstrap=self.details["workload_settings"].kafka_bootstrap,
                                  timeout_s=max(60.0, min(300.0, self.left_s() / 4)))
        self.figures.update({k: v for k, v in figures.items() if not k.endswith("_topic")})

    def peer(self) -> None:
        if self.opts.skip_peer:
            raise PhaseSkipped("--skip-peer")
        from bench.peers import quix_peer

        topic = self._events_topic()
        # a steady rate needs no million events: ~40 s of Quix at full speed is ~400,000 of them
        timeout = max(45.0, min(900.0, self.left_s() * 0.05))
        # as many peer processes as Herald has workers: a comparison of equals
        figures = quix_peer.run(topic, self.opts.events, settings=self.details["workload_settings"], timeout_s=timeout,
                                processes=self.worker_count(), window_s=self.opts.batch_window_s,
                                digest_s=self.opts.digest_period_s)
        self.groups.append(figures.get("quix_group"))
        self.details["quix_decisions_topic"] = figures.get("quix_decisions_topic")
        self.figures.update({k: v for k, v in figures.items() if not k.endswith(("_topic", "_group"))})
        if not figures.get("quix_complete"):
            self.notes.append(f"The Quix Streams peer decided {figures.get('quix_events', 0):,} of {self.opts.events:,} "
                              f"events within its {timeout:.0f} s; its rate is over those.")

    def pipeline(self) -> None:
        """Herald's full pipeline on the workload's topics, which are already full: start-up is not counted."""
        topic = self._events_topic()
        settings = self.details["workload_settings"]
        heads = Heads(self.codec())
        self.details["heads"] = heads
        decided = Decided(heads)
        tap = Tap(settings.kafka_bootstrap, [settings.topic("decisions")], decided.handle).start_ready()
        self.threads.append(tap)
        worker = self.new_crew("pipeline", self.worker_env(settings, self.opts.digest_period_s))
        self.details["pipeline_worker"] = worker
        ready_s = worker.start()
        self.figures["pipeline_startup_s"] = round(ready_s, 2)
        self.figures["pipeline_workers"] = len(worker.members)
        self.figures["pipeline_exactly_once"] = settings.exactly_once  # the workers' mode (HERALD_EXACTLY_ONCE)
        self.console.say(f"  {len(worker.members)} worker(s) ready in {ready_s:.1f} s (one per core); reading "
                         f"{self.opts.events:,} events from {topic}")
        limit = self.pipeline_limit_s()
        total = self.opts.events
        started = time.monotonic()
        cpu0 = time.process_time()
        last_n, last_change = 0, time.monotonic()
        with self.console.meter("first decisions", total) as update:
            while decided.inputs < total:
                worker.check()
                n = decided.inputs
                if n != last_n:
                    last_n, last_change = n, time.monotonic()
                if time.monotonic() - last_change > 60:
                    self.notes.append(f"Herald stopped deciding after {n:,} of {total:,} events (nothing new for 60 s).")
                    break
                if time.monotonic() - started > limit:
                    self.notes.append(f"Herald's pipeline phase was cut at its budget share of {limit:.0f} s with "
                                      f"{n:,} of {total:,} events decided; the rates are over those "
                                      f"(--budget-min 0 lets it run to the end).")
                    break
                rate = decided.inputs / max(0.001, time.monotonic() - started)
                update(n, f"{rate:,.0f}/s")
                time.sleep(0.5)
            update(decided.inputs, "")
        stamps = sorted(decided.first_ms)
        n = len(stamps)
        if n == 0:
            raise RuntimeError(f"the worker decided nothing; see {worker.log}")
        span = (stamps[-1] - stamps[0]) / 1000
        steady = steady_rate(stamps)
        overall = round(n / span, 1) if span > 0 else None
        self.figures.update({
            "pipeline_events": total, "pipeline_events_decided": n, "pipeline_complete": n >= total,
            "pipeline_events_per_s": steady if steady is not None else overall,
            "pipeline_events_per_s_per_worker": round((steady if steady is not None else overall or 0)
                                                      / len(worker.members), 1),
            "pipeline_overall_events_per_s": overall,
            "pipeline_first_to_last_decision_s": round(span, 2),
            "pipeline_outcomes_first": {heads.outcomes[k]: v for k, v in sorted(decided.outcomes.items())},
            "pipeline_bench_reader_cpu_s": round(time.process_time() - cpu0, 1),
            "pipeline_requests": requests_by_channel(settings),
        })
        if n < total:
            self.name_undecided("pipeline", settings, heads, worker)
        self.compare_with_peer(settings, heads, decided)
        self.console.say(f"  {n:,} events decided: {self.figures['pipeline_events_per_s']:,.0f} events/s at steady "
                         f"state (10%→90%), {overall or 0:,.0f} events/s first to last")
        rss = worker.rss_mb()
        self.figures["pipeline_worker_rss_mb"] = max(rss) if rss else None
        self.figures["pipeline_workers_rss_mb"] = round(sum(rss), 1) if rss else None
        # every input has exactly one final decision: wait (a while) for the batches, digests and throttled
        # parts to go out, so that the latency phase does not share the worker with their release
        # a cut phase leaves a backlog: no point; with a budget the time is better spent on the digests (the
        # latency phase then takes fresh workers if these still have work)
        wait = self.opts.all_final_wait_s if n >= total and not self.opts.budget_min else 0.0
        deadline = time.monotonic() + wait
        while decided.finals < n and time.monotonic() < deadline:
            worker.check()
            time.sleep(0.5)
        if decided.finals >= n:
            self.figures["pipeline_all_final_s"] = round((decided.last_final_ms - stamps[0]) / 1000, 2)
        elif n >= total:
            when = (f"{wait:.0f} s after the last first decision" if wait
                    else "when the last event got its first decision (a budgeted run does not wait for the rest)")
            self.notes.append(f"{decided.finals:,} of {n:,} decided events were final {when}; the rest were waiting in "
                              "batches, digests or rate limits.")
        tap.stop()

    def compare_with_peer(self, settings: Any, heads: Heads, decided: Decided) -> None:
        """Read the peer's decisions topic back and compare its first decisions with Herald's, event by event
        (``first_decisions_compared``): after Herald's phase, so the reading does not share its cores."""
        from bench.undecided import read_topic

        topic = self.details.get("quix_decisions_topic")
        if not topic:
            return
        peer: dict[bytes, int] = {}

        def handle(msg: Any) -> None:
            event_id, outcome, _ = heads.decision(msg.value())
            peer.setdefault(event_id, outcome)
        try:
            read_topic(settings.kafka_bootstrap, topic, handle)
        except Exception as exc:  # noqa: BLE001 - the rates stand; the comparison by outcome shares remains
            self.notes.append(f"The peer's decisions could not be read back to compare event by event: "
                              f"{type(exc).__name__}: {exc}")
            return
        self.figures.update(first_decisions_compared(decided.first, peer, heads.outcomes))

    def name_undecided(self, phase: str, settings: Any, heads: Heads, crew: "Crew") -> None:
        """A phase that ended with events undecided: name them (``<phase>_undecided`` in the figures: event ids,
        their partition and offset on the input topic, their decisions if any, what the workers logged
        about them), say so in the notes, and keep the run's topics and worker state for inspection."""
        from bench import undecided

        self.incomplete.append(phase)
        try:
            found = undecided.find(settings.kafka_bootstrap, settings.topic("events"), settings.topic("decisions"),
                                   heads.decision, heads.outcomes)
            lines = undecided.worker_lines([m.log for m in crew.members], found["undecided"])
            for entry in found["undecided"]:
                entry["worker_log_lines"] = lines.get(entry["event_id"], [])
        except Exception as exc:  # noqa: BLE001 - the phase's figures stand without the names
            self.notes.append(f"The {phase} phase's undecided events could not be named: {type(exc).__name__}: {exc}")
            return
        self.figures[f"{phase}_undecided"] = found
        named = "; ".join(f"{u['event_id']} at " + ", ".join(f"{settings.topic('events')}[{r['partition']}]@{r['offset']}"
                                                               for r in u["likely_undecided"])
                          + (f" (decided: {', '.join(u['decisions'])})" if u["decisions"] else " (no decision)")
                          for u in found["undecided"][:10])
        more = found["undecided_event_ids"] - min(10, len(found["undecided"]))
        self.notes.append(f"{found['undecided_records']:,} input record(s) of the {phase} phase have no decision "
                          f"({found['inputs']:,} input records, {found['decisions']:,} decisions read back): {named}"
                          + (f" and {more:,} more event ids" if more > 0 else "")
                          + f". Workers' logs: {self.logs()}.")
        for entry in found["undecided"][:10]:
            self.console.say(f"  undecided: {entry['event_id']} at {entry['likely_undecided']}, decisions "
                             f"{entry['decisions'] or 'none'}; {len(entry['worker_log_lines'])} worker log line(s)")

    def after_pipeline_s(self) -> float:
        """About how long the phases after the pipeline take at full scale (from the rates measured on a 2-core
        machine): what the pipeline phase must leave of the budget."""
        latency = self.opts.latency_warmup_s + self.opts.latency_s + 30  # fresh workers' start, the stream, the late deliveries
        return latency + self.digest_need_s(self.opts.digest_users) + self.after_digests_s()

    def after_digests_s(self) -> float:
        """Recovery (~30 s), the API phase (its run, and seeding: ~4 ms a user), writing up and cleaning up."""
        api = self.opts.api_warmup_s + self.opts.api_duration_s + self.opts.api_users * 0.004 + 15
        return 30 + (0 if self.opts.skip_api else api) + 10

    @staticmethod
    def digest_need_s(users: int) -> float:
        """Seeding, restoring, indexing and releasing ``users`` digests, plus the workers' start and the wait for
        the period's end."""
        return users * DIGEST_S_PER_USER + 35

    @staticmethod
    def digest_before_end_s(seed_s: float) -> float:
        """What the digest period must outlast, given the seeding's expected time here: the seeding, the
        workers' start, their restore and their index."""
        return seed_s * (1 + RESTORE_PER_SEED + INDEX_PER_SEED) + 25

    def pipeline_limit_s(self) -> float:
        """The pipeline phase's share of the budget: what the later phases do not need, and never less than
        40% of what is left (a slow pipeline then cuts the digests, which say so, rather than itself alone)."""
        if not self.opts.budget_min:
            return float("inf")
        left = self.left_s()
        return max(60.0, left * 0.4, left - self.after_pipeline_s())

    def critical(self) -> None:
        """CRITICAL produce → delivery topic latency, on the pipeline worker, at half its measured rate."""
        worker: Crew | None = self.details.get("pipeline_worker")
        settings = self.details.get("workload_settings")
        measured = self.figures.get("pipeline_events_per_s")
        rate = self.opts.latency_rate or (max(20.0, measured / 2) if measured else 100.0)
        backlog = not self.figures.get("pipeline_complete")
        if not backlog and "pipeline_all_final_s" not in self.figures and worker is not None and worker.alive():
            share = worker.cpu_share(2.0)  # parts waiting for a rate limit cost nothing; a release does
            self.figures["pipeline_worker_cpu_share_before_latency"] = share
            backlog = share is not None and share > 0.3
        if worker is None or not worker.alive() or backlog:
            # a worker with work left (a cut phase, or batches, digests and throttled parts still to release)
            # would time its queue, not a CRITICAL event
            if worker is not None:
                worker.stop()
            from bench import workload
            from herald.topics import ensure_topics, register_schemas

            prefix = workload.unique_prefix()
            self.prefixes.append(prefix)
            settings = self.settings(prefix)
            self.app_ids.append(settings.app_id)
            ensure_topics(settings)
            register_schemas(settings)
            worker = self.new_crew("latency", self.worker_env(settings, self.opts.digest_period_s))
            worker.start()
            worker.wait_settled(settings.partitions)
            why = ("the pipeline worker still had work left from the throughput phase" if measured
                   else f"the pipeline phase measured no rate, so at {rate:,.0f} events/s")
            self.notes.append(f"CRITICAL latency was measured on a fresh worker and topics ({why}).")
        try:
            self._critical(worker, settings, rate, measured)
        finally:
            worker.stop()

    def _critical(self, worker: Crew, settings: Any, rate: float, measured: float | None) -> None:
        from bench import worker_metrics
        from bench.api_latency import machine_busy, machine_ticks

        latencies = Latencies(self.codec())
        topics = [settings.topic(f"delivery.{c}") for c in DELIVERY_CHANNELS]
        tap = Tap(settings.kafka_bootstrap, topics, latencies.handle, from_end=True, wait_s=0.002).start_ready()
        self.threads.append(tap)
        stream = Stream(settings.kafka_bootstrap, self.codec(), settings.topic("events"), self.opts.users,
                        "bench-user-", rate, self.opts.latency_warmup_s + self.opts.latency_s, seed=self.opts.seed + 11,
                        tag="crit", warmup_s=self.opts.latency_warmup_s)
        self.threads.append(stream)
        load = "fixed by --latency-rate" if self.opts.latency_rate else f"half of {measured or 0:,.0f}"
        warmup = self.opts.latency_warmup_s
        self.console.say(f"  a mixed stream at {rate:,.0f} events/s ({load}): {warmup:g} s of warm-up, not timed, then "
                         f"{self.opts.latency_s:g} s whose CRITICAL events are timed to their first delivery record")
        floor = BrokerLag(settings.kafka_bootstrap, settings.topic("events"), self.logs() / "broker-lag.json",
                          settings.exactly_once, warmup, settings.fetch_max_wait_ms).start()
        self.threads.append(floor)
        cores = CoresBy({"workers": worker.pids(), "broker": _broker_pids(),
                         "bench": [os.getpid(), *([floor.proc.pid] if floor.proc else [])]})
        stream.start()
        started, busy_before = time.monotonic(), None
        pids = worker.pids()
        waits_before: dict[float, float] | None = None  # the workers' own share, as they time it (``streams.metrics``)
        with self.console.meter("CRITICAL delivered", max(1, int(rate * self.opts.latency_s * 0.05)), "events") as update:
            while stream.is_alive():
                worker.check()
                if busy_before is None and time.monotonic() - started >= warmup:
                    busy_before = machine_ticks()
                    cores.start()
                    waits_before = worker_metrics.read_buckets(pids, WAIT_METRIC)
                update(len(latencies.read_ms), f"of {stream.critical:,} sent")
                time.sleep(0.5)
        busy = None if busy_before is None else machine_busy(busy_before)  # None: the stream ended within its warm-up
        used = {} if busy_before is None else cores.stop()
        lag = floor.stop()
        if stream.error:
            raise stream.error
        grace = max(15.0, self.opts.latency_s)  # late deliveries are latencies too: wait for them a while
        deadline = time.monotonic() + grace
        while len(latencies.read_ms) < stream.critical and time.monotonic() < deadline:
            worker.check()
            time.sleep(0.2)
        waits = ({} if waits_before is None
                 else worker_metrics.difference(waits_before, worker_metrics.read_buckets(pids, WAIT_METRIC)))
        tap.stop()
        read = sorted(latencies.read_ms.values())
        stamped = sorted(latencies.stamp_ms.values())
        trend = latency_trend(latencies.read_ms)
        if not read:
            raise RuntimeError(f"none of the {stream.critical} CRITICAL events sent reached a delivery topic within "
                               f"{grace:.0f} s of the stream's end; see {worker.log}")
        if len(read) < stream.critical:
            self.notes.append(f"{stream.critical - len(read)} of {stream.critical} CRITICAL events had not reached a "
                              f"delivery topic {grace:.0f} s after the stream ended; the percentiles are over the others.")
        self.figures.update({
            "critical_stream_events_per_s": round(stream.sent / (self.opts.latency_warmup_s + self.opts.latency_s), 1),
            "critical_warmup_s": self.opts.latency_warmup_s,
            "critical_stream_rate_fixed": bool(self.opts.latency_rate),
            "critical_sent": stream.critical, "critical_samples": len(read),
            "critical_missing": stream.critical - len(read),
            "critical_p50_ms": round(percentile(read, 50), 2), "critical_p95_ms": round(percentile(read, 95), 2),
            "critical_p99_ms": round(percentile(read, 99), 2), "critical_max_ms": round(read[-1], 2),
            "critical_p99_to_record_timestamp_ms": round(percentile(stamped, 99), 2),
            "critical_first_channels": dict(latencies.channels),
            "critical_p50_by_quarter_ms": trend,
            "critical_floor_p50_ms": lag.get("p50_ms"), "critical_floor_p99_ms": lag.get("p99_ms"),
            "critical_floor_records": lag.get("records"),
            "critical_machine_busy_pct": None if busy is None else round(100 * busy, 1),
            # where those cores went: the workers, the broker, and the bench's own stream, tap and bare consumer
            "critical_workers_cores": used.get("workers"), "critical_broker_cores": used.get("broker"),
            "critical_bench_cores": used.get("bench"),
            # from the lane's reader reading an event to its requests queued: a histogram's bounds, not exact figures
            "critical_worker_wait_events": int(waits.get(math.inf, 0)),
            **{f"critical_worker_wait_p{q}_at_most_ms": _ms(worker_metrics.percentile_at_most(waits, q)) for q in (50, 99)},
        })
        if len(trend) == 4 and trend[3] > 2 * trend[0] and trend[3] > 100:
            self.notes.append(f"CRITICAL latency rose during the stream (median by quarter {', '.join(f'{x:,.0f}' for x in trend)} "
                              f"ms): Herald did not keep up with {rate:,.0f} events/s arriving live"
                              + ("" if self.opts.latency_rate else ", half the rate it decided a backlog at")
                              + ", so its p99 includes a growing queue.")
        self.console.say(f"  CRITICAL p50 {self.figures['critical_p50_ms']:.1f} ms, p95 {self.figures['critical_p95_ms']:.1f} ms, "
                         f"p99 {self.figures['critical_p99_ms']:.1f} ms over {len(read):,} events")
        if lag.get("records"):
            share = "(not measured)" if busy is None else f"{busy:.0%}"
            self.console.say(f"  the floor: a bare consumer in its own process read the stream's events p50 {lag['p50_ms']:.1f} ms, "
                             f"p99 {lag['p99_ms']:.1f} ms after they were produced, with the machine's cores "
                             f"{share} busy in the timed part")
        if self.figures["critical_worker_wait_events"]:
            self.console.say(f"  in the workers, from the lane's reader reading an event to its requests queued, for "
                             f"{self.figures['critical_worker_wait_events']:,} events decided ahead: p50 "
                             f"{_at_most(self.figures['critical_worker_wait_p50_at_most_ms'])}, p99 "
                             f"{_at_most(self.figures['critical_worker_wait_p99_at_most_ms'])}")
        if used:
            self.console.say("  cores used in the timed part: " + ", ".join(f"{name} {value:.2f}" for name, value in used.items()))

    def digest(self) -> None:
        """A worker holding --digest-users users' states, each with one LOW event in one digest period; the
        time from the period's end to the last DIGEST request. The states are written to the worker's
        changelog first (``bench.digest_seed``: the policy's own states) and the worker restores them."""
        from bench import digest_seed, workload
        from bench.api_latency import machine_busy, machine_ticks
        from herald.topics import ensure_topics, register_schemas

        requested = users = self.opts.digest_users
        prefix = workload.unique_prefix()
        self.prefixes.append(prefix)
        # this machine's speed now: a sample seeded as the states will be (to a changelog of its own)
        sample = min(users, PROBE_USERS)
        probe = digest_seed.seed(dataclasses.replace(self.settings(prefix), app_id=f"{prefix}probe"), sample,
                                 int(time.time() * 1000))
        seed_s_per_user = probe["digest_seed_s"] / sample
        slowness = max(1.0, seed_s_per_user * SEED_PER_S)
        self.figures.update({"digest_probe_users": sample, "digest_probe_states_per_s": probe["digest_seed_states_per_s"],
                             "digest_slowness": round(slowness, 2)})
        left = self.left_s()
        if left != float("inf"):
            # this phase (seeding, restoring, the digests going out) and what follows it
            per_user_s = DIGEST_S_PER_USER * slowness
            affordable = round_down_nicely(int(max(10.0, left - self.after_digests_s() - 10) / per_user_s))
            if affordable < users:
                users = affordable
                self.notes.append(
                    f"Digests were measured for {users:,} users, not the {requested:,} asked for: seeding, restoring "
                    f"and emitting {requested:,} users' digests would need about {_minutes(requested * per_user_s)}, "
                    f"over what the {self.opts.budget_min:g}-minute budget leaves (--budget-min 0 lifts it).")
        before_end = self.digest_before_end_s(users * seed_s_per_user)
        period = choose_period(int(before_end * 1.15) + 5, time.time() + before_end)
        self.console.say(f"  a sample of {sample:,} states seeded at {probe['digest_seed_states_per_s']:,.0f}/s: a period "
                         f"of {period} s, to end after the seeding, restore and index of {users:,}")
        settings = self.settings(prefix, digest_period_s=period, dedup_window_s=DIGEST_DEDUP_WINDOW_S)
        self.app_ids.append(settings.app_id)
        ensure_topics(settings)
        register_schemas(settings)
        self.details["digest_settings"] = settings
        now = time.time()
        end = now - now % period + period
        start = end - period
        at_ms = int(max(now, start + 0.001) * 1000)
        self.console.say(f"  {users:,} users' states (one LOW event each, in the period "
                         f"{time.strftime('%H:%M:%S', time.localtime(start))}–{time.strftime('%H:%M:%S', time.localtime(end))})"
                         " written to the worker's changelog by the policy's own code")
        seeded = digest_seed.seed(settings, users, at_ms)
        self.figures.update(seeded)
        self.console.say(f"  {seeded['digest_seeded_states']:,} states in {seeded['digest_seed_s']:.1f} s; starting the worker")
        env = {**self.worker_env(settings, period), "HERALD_DEDUP_WINDOW_S": str(DIGEST_DEDUP_WINDOW_S)}
        worker = self.new_crew("digest", env)
        self.details["digest_worker"] = worker
        started = time.monotonic()
        worker.start()
        restored_s = worker.wait_for(b"Recovery complete", timeout=max(120.0, end - time.time() + 60))
        self.console.say(f"  {len(worker.members)} worker(s) restored {users:,} states from the changelog in "
                         f"{restored_s:.1f} s after their start")
        worker.wait_for(b"indexed ", timeout=max(60.0, end - time.time() + 60))
        indexed_s = time.monotonic() - started
        rss = worker.rss_mb()
        self.figures.update({
            "digest_users_requested": requested, "digest_users": users, "digest_period_s": period,
            "digest_workers": len(worker.members),
            "digest_restore_s": round(restored_s, 2),
            "digest_restore_states_per_s": round(users / restored_s, 1) if restored_s > 0 else None,
            "digest_worker_ready_s": round(indexed_s, 2),
            "worker_rss_mb": round(sum(rss), 1), "worker_rss_mb_each": rss, "worker_state_users": users,
        })
        self.console.say(f"  {len(worker.members)} worker(s) holding {users:,} users, indexed {indexed_s:.1f} s after "
                         f"their start; RSS {sum(rss):,.0f} MB in all")
        margin = round(end - time.time(), 1)
        self.figures["digest_ready_before_end_s"] = margin  # negative: the period ended first
        if margin <= 0:
            self.notes.append(f"The digest workers were still restoring or indexing their users when the period ended "
                              f"(ready {-margin:g} s after it), so digest_s includes part of that.")
        heads: Heads = self.details.get("heads") or Heads(self.codec())
        digests = Digests(heads)
        tap = Tap(settings.kafka_bootstrap, [settings.topic("delivery.email")], digests.handle).start_ready()
        self.threads.append(tap)
        if time.time() < end:
            self.console.say(f"  waiting {end - time.time():.1f} s for the period to end")
            while time.time() < end:
                worker.check()
                time.sleep(min(0.5, max(0.0, end - time.time())))
        ingested = users
        taps = [tap]
        # where the cores go while the digests go out: what bounds digest_s on this machine
        release = CoresBy({"workers": worker.pids(), "broker": _broker_pids(), "bench": [os.getpid()]})
        busy_before = machine_ticks()
        release.start()
        with self.console.meter("digests emitted", ingested, "digests") as update:
            deadline = end + max(120.0, ingested / 2000)
            while digests.count < ingested and time.time() < deadline:
                worker.check()
                update(digests.count, "")
                time.sleep(0.25)
            update(digests.count, "")
        used, busy = release.stop(), machine_busy(busy_before)
        for tap in taps:
            tap.stop()
        if not digests.count:
            raise RuntimeError(f"no DIGEST request was emitted by {deadline - end:.0f} s after the period's end")
        end_ms = int(end * 1000)
        digest_s = round((digests.last_ms - end_ms) / 1000, 3)
        self.figures.update({
            "digest_s": digest_s, "digest_first_s": round((digests.first_ms - end_ms) / 1000, 3),
            "digests_emitted": digests.count, "digests_per_s": round(digests.count / digest_s, 1) if digest_s > 0 else None,
            "digest_machine_busy_pct": round(100 * busy, 1), "digest_workers_cores": used.get("workers"),
            "digest_broker_cores": used.get("broker"), "digest_bench_cores": used.get("bench"),
            # the workers' CPU for each digest, comparable with `python -m bench.digest_release` on the same machine
            "digest_worker_cpu_us_per_digest": (round(release.cpu_s["workers"] / digests.count * 1e6, 1)
                                                if "workers" in release.cpu_s else None),
        })
        if digests.count < ingested:
            self.notes.append(f"{digests.count:,} of {ingested:,} digests were emitted within the wait; digest_s is the "
                              "time to the last one seen.")
        self.console.say(f"  {digests.count:,} digests, the last {digest_s:.1f} s after the period's end")
        if used:
            self.console.say(f"  cores used while they went out ({busy:.0%} of the machine busy): "
                             + ", ".join(f"{name} {value:.2f}" for name, value in used.items()))

    def recovery(self) -> None:
        """kill -9 the digest workers (a million users of state, by default) mid-stream; new ones on the same
        disks; the time from the kill to the first decision they write."""
        worker: Crew | None = self.details.get("digest_worker")
        if worker is None or not worker.alive():
            raise PhaseSkipped("no running digest worker (its phase failed)")
        settings = self.details["digest_settings"]
        rate = (self.figures.get("pipeline_events_per_s") or 200.0) / 2
        first = FirstAfter()
        tap = Tap(settings.kafka_bootstrap, [settings.topic("decisions")], first.handle, from_end=True).start_ready()
        self.threads.append(tap)
        stream = Stream(settings.kafka_bootstrap, self.codec(), settings.topic("events"),
                        max(1, self.figures.get("digest_users") or 1), "digest-user-", rate, seed=self.opts.seed + 23,
                        tag="rec")
        self.threads.append(stream)
        stream.start()
        time.sleep(2 if self.opts.quick else 4)
        worker.check()
        first.after_ms = killed_ms = worker.kill9()
        self.console.say(f"  killed the worker(s) (kill -9) with a stream of {rate:,.0f} events/s going on")
        again = Crew([self.new_worker(f"{m.name}-after-kill", m.env) for m in worker.members])
        try:
            ready_s = again.start()
            self.figures["recovery_ready_s"] = round((now_ms() - killed_ms) / 1000, 2)
            self.console.say(f"  new worker(s) ready in {ready_s:.1f} s")
            deadline = time.monotonic() + 180
            while first.first_ms is None and time.monotonic() < deadline:
                again.check()
                time.sleep(0.1)
        finally:
            stream.stop()
            tap.stop()
            again.stop()
        if first.first_ms is None:
            raise RuntimeError(f"the new worker wrote no decision within 180 s of the kill; see {again.log}")
        self.figures["recovery_s"] = round((first.first_ms - killed_ms) / 1000, 2)
        self.console.say(f"  kill -9 → next decision: {self.figures['recovery_s']:.1f} s")

    def api(self) -> None:
        if self.opts.skip_api:
            raise PhaseSkipped("--skip-api")
        from bench import api_latency

        figures = api_latency.run(rate=self.opts.api_rate, duration=self.opts.api_duration_s,
                                  warmup=self.opts.api_warmup_s, users=self.opts.api_users,
                                  progress=lambda line: self.console.say(f"  {line}"))
        for key, value in figures.items():
            self.figures[key if key.startswith("unread_") else f"unread_{key}"] = value
        self.console.say(f"  unread count p50 {figures.get('unread_p50_ms')} ms, p99 {figures.get('unread_p99_ms')} ms "
                         f"at {figures.get('unread_requests_per_s')} req/s")

    # -- the end

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.stop()
        for thread in self.threads:
            if thread.is_alive():
                thread.stop()
        kept_for = self.incomplete and not self.opts.delete_incomplete
        if kept_for and not self.opts.keep and self.prefixes:
            self.console.say(f"  kept the benchmark topics ({', '.join(self.prefixes)}*) and worker state: "
                             f"{', '.join(self.incomplete)} ended with events undecided (--delete-incomplete deletes them)")
            self.notes.append(f"Topics {', '.join(p + '*' for p in self.prefixes)} and the workers' state under "
                              f"{self.data_root()} were kept for inspection.")
        if not self.opts.keep and self.prefixes and not kept_for:
            from bench.workload import delete_topics
            from herald.settings import Settings
            from infra.common import home

            prefixes, groups = tuple(self.prefixes), [g for g in self.groups if g]
            try:
                deleted = delete_topics(Settings.from_env().kafka_bootstrap,
                                        lambda t: t.startswith(prefixes) or any(g in t for g in groups))
                self.console.say(f"  deleted {len(deleted)} benchmark topics (--keep keeps them)")
            except Exception as exc:  # noqa: BLE001 - a leftover topic is not worth failing the run
                self.console.say(f"  could not delete the benchmark topics: {exc}")
            for app_id in self.app_ids:
                shutil.rmtree(home() / "faust" / app_id, ignore_errors=True)
            shutil.rmtree(self.data_root(), ignore_errors=True)
        self.stop_services()

    def stop_services(self) -> None:
        from infra import kafka, postgres, registry

        modules = {"postgres": postgres, "kafka": kafka, "registry": registry}
        for name in reversed(self.started_services):
            self.console.say(f"  stopping {name}, which this run started")
            try:
                modules[name].stop()
            except Exception as exc:  # noqa: BLE001
                self.console.say(f"  could not stop {name}: {exc}")
        self.started_services.clear()

    def results(self, machine_info: dict, total_s: float) -> dict:
        f = self.figures
        herald, ceiling, quix = f.get("pipeline_events_per_s"), f.get("passthrough_events_per_s"), f.get("quix_events_per_s")
        f["pipeline_vs_passthrough_ratio"] = round(herald / ceiling, 4) if herald and ceiling else None
        f["pipeline_vs_quix_ratio"] = round(herald / quix, 3) if herald and quix else None
        for key, needs in (("pipeline_vs_passthrough_ratio", ("pipeline_events_per_s", "passthrough_events_per_s")),
                           ("pipeline_vs_quix_ratio", ("pipeline_events_per_s", "quix_events_per_s"))):
            if f[key] is None:
                missing = [n for n in needs if f.get(n) is None]
                self.skipped.setdefault(key, f"{', '.join(missing)} not measured: {self.skipped.get(missing[0], 'see notes')}"
                                        if missing else "not measured")
        from bench.report import HEADLINE

        for key in HEADLINE:
            f.setdefault(key, None)
            if f[key] is None:
                self.skipped.setdefault(key, "not measured (see notes)")
        opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.opts).items()}
        return {
            "run_id": self.run_id, "started_at": self.started_at,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "total_s": round(total_s, 1),
            "git": git_info(), "machine": machine_info, "stack": self.stack, "options": opts,
            "figures": f, "skipped": {k: v for k, v in self.skipped.items()}, "notes": self.notes, "errors": self.errors,
            "phase_s": self.phase_s, "phase_load_1min": self.phase_load, "worker_logs": str(self.logs()),
        }


def requests_by_channel(settings: Any) -> dict[str, int]:
    """Records in each of Herald's delivery topics the peer also writes (its users are offline: no WEBSOCKET),
    counted by reading them: the worker writes in transactions, whose markers take offsets too."""
    from bench.peers.quix_peer import CHANNELS
    from bench.undecided import read_topic
    from herald.topics import delivery_topic

    return {c: read_topic(settings.kafka_bootstrap, delivery_topic(settings, c), lambda msg: None) for c in CHANNELS}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _at_most(ms: float | None) -> str:
    """A percentile read from histogram buckets: under which bound it is."""
    return "past the last bucket" if ms is None else f"≤ {ms:g} ms"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} seconds" if seconds < 120 else f"{seconds / 60:.0f} minutes"


def latency_trend(by_event: dict[str, float]) -> list[float]:
    """Median latency of each quarter of the events, in the order they were sent (event ids end in -<k>)."""
    ordered = [v for _, v in sorted(by_event.items(), key=lambda kv: int(kv[0].rsplit("-", 1)[1]))]
    q = len(ordered) // 4
    if q == 0:
        return []
    return [round(percentile(sorted(ordered[i * q:(i + 1) * q]), 50), 1) for i in range(4)]


def choose_period(minimum_s: int, ready_at: float) -> int:
    """A digest period of at least ``minimum_s`` seconds (periods are aligned to the epoch) whose next
    boundary after ``ready_at`` comes soonest, so the worker's start is followed by a fresh period."""
    best, best_wait = minimum_s, float("inf")
    for period in range(minimum_s, minimum_s + max(6, minimum_s // 3) + 1):
        wait = (-ready_at) % period
        if wait < best_wait:
            best, best_wait = period, wait
    return best


def digest_events(codec: Any, topic: str, users: int) -> list[tuple[bytes, bytes]]:
    """One LOW event (no dedup_key) for each of ``digest-user-0`` .. ``digest-user-{users-1}``, encoded
    field by field as the workload is (``bench.workload.FieldwiseEncoder``)."""
    from bench.workload import HEADER, TEXTS, FieldwiseEncoder

    encoder = FieldwiseEncoder("NotificationEvent")
    header = HEADER.pack(0, codec.registry.register(f"{topic}-value", "NotificationEvent"))
    types = ("COMMENT", "HABIT_REMINDER", "PROJECT_MILESTONE", "SYSTEM")
    shapes = [encoder.shape({"type": t, "priority": "LOW", "title": TEXTS[t][0], "body": TEXTS[t][1],
                             "dedup_key": None, "batchable": True, "channels": None, "deliver_after": None,
                             "cancel_key": None}) for t in types]
    at = now_ms()
    out = []
    for i in range(users):
        user = f"digest-user-{i}"
        out.append((user.encode(), header + shapes[i % len(shapes)](f"dg-{i}", user, {"entity_id": str(i)}, at)))
    return out


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        # log_level 0: a broker that is not up yet is the expected answer here, not an error to print
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=3)
        return True
    except KafkaException:
        return False


def _registry_answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/subjects", timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def _postgres_answers(dsn: str) -> bool:
    import asyncio

    import asyncpg

    async def ping() -> None:
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()
    try:
        asyncio.run(ping())
        return True
    except Exception:  # noqa: BLE001 - refused, wrong credentials, not PostgreSQL: all "not usable"
        return False


def run(opts: Options) -> dict:
    """Measure everything, write the results, BENCHMARKS.md and the chart; return the results."""
    from bench import report

    console = Console()
    bench = Run(opts, console)
    bench.t0 = time.monotonic()
    bench.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{uuid.uuid4().hex[:4]}"
    bench.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = machine()
    console.mark(f"[bold]herald bench[/bold] {bench.run_id}: {opts.events:,} events, {opts.users:,} users, "
                f"{opts.digest_users:,} digest users; {info['nproc']} cores, load {info['load_before']}"
                + (f"; budget {opts.budget_min:g} min" if opts.budget_min else ""))
    try:
        if bench.phase("stack", bench.ensure_stack):
            bench.phase("workload", bench.workload, ("workload_events",))
            bench.phase("passthrough ceiling", bench.passthrough, ("passthrough_events_per_s",))
            bench.phase("Quix Streams peer", bench.peer, ("quix_events_per_s",))
            bench.phase("Herald pipeline", bench.pipeline, ("pipeline_events_per_s", "pipeline_overall_events_per_s"))
            bench.phase("CRITICAL latency", bench.critical, ("critical_p50_ms", "critical_p95_ms", "critical_p99_ms"))
            bench.phase("digests", bench.digest, ("digest_users", "digest_s", "digests_per_s", "worker_rss_mb",
                                                  "worker_state_users"))
            bench.phase("recovery", bench.recovery, ("recovery_s",))
            bench.phase("unread-count API", bench.api, ("unread_p50_ms", "unread_p99_ms"))
        else:
            for key in report.HEADLINE:
                bench.skipped.setdefault(key, "the stack did not come up")
    finally:
        console.mark("[bold]▶ cleanup[/bold]")
        started = time.monotonic()
        bench.cleanup()
        bench.phase_s["cleanup"] = round(time.monotonic() - started, 1)
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    total_s = time.monotonic() - bench.t0
    results = bench.results(info, total_s)
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"bench-{bench.run_id}.json"
    results["results_file"] = os.path.relpath(path, REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else str(path)
    text = json.dumps(results, indent=2, default=str) + "\n"
    path.write_text(text)
    (opts.out / "latest.json").write_text(text)
    made = report.write(results, opts.markdown_path(), opts.out / "chart.png", say=console.say)
    _summary(console, results, path, made)
    return results


def _summary(console: Console, results: dict, path: Path, made: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from bench.report import ROWS, fmt, verdict

    f = results["figures"]
    table = Table(title=f"herald bench {results['run_id']}", show_lines=False)
    for column in ("figure", "this run", "target", "met"):
        table.add_column(column)
    for row in ROWS:
        table.add_row(row.key, fmt(f.get(row.key), row.unit) if f.get(row.key) is not None else "not measured",
                      row.target or "—", verdict(row, f).replace("**", ""))
    console.rich.print(table)
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results["phase_s"].items())
    console.mark(f"time per phase: {phases}; [bold]total {results['total_s']:.0f} s[/bold]")
    for note in results["notes"]:
        console.mark(f"[yellow]note:[/yellow] {escape(note)}")
    for phase, error in results["errors"].items():
        console.mark(f"[red]{escape(phase)} failed:[/red] {escape(error)}")
    console.say(f"wrote {path}, {made['markdown']}" + (f", {made['chart']}" if made["chart"] else " (no chart)"))


PHASES = {"sinks": "bench.sinks", "ws": "bench.ws"}  # phases of their own: `herald bench sinks ...`


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PHASES:
        import importlib

        return importlib.import_module(PHASES[argv[0]]).main(argv[1:])
    opts = options_from(argv)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that the workers (in sessions of their own) are stopped on the way out

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupted) if main_thread else None
    try:
        results = run(opts)
    except KeyboardInterrupt:
        print("herald bench: interrupted; what was started has been stopped", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    from bench.report import HEADLINE

    print(json.dumps({k: results["figures"].get(k) for k in HEADLINE}))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
