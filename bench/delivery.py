"""Benchmark: delivery out of the host (the product's detached sender), in four parts.

The host's worker only persists records to the on-disk queue; the product's detached sender
(``python -m callhome _sender``) delivers them. The parts:

- ``short``: --runs sequential runs of ``_short_host.py`` (init, two ``track()``, exit without
  ``flush()``) against the collector answering every request after 0.3 s (``hang:0.3``),
  interleaved with ``python -c pass``: each run's added wall time (``_launch.py``, as
  ``cli_startup.py``), whether any run printed anything, and whether all events arrived exactly
  once (distinct ids, the collector's ``duplicates``) and how long after the last run's exit.
- ``kill``: ``_paced_host.py`` tracking 1 000 events/s (10 every 10 ms, writing every returned
  id to a file) against a collector answering after 2 s (``hang:2``), SIGKILLed 2.5 s in. The
  fault is then cleared and the sender, which outlives the host, delivers the rest: accepted ids,
  delivered, lost, duplicates. A second variant SIGKILLs the sender too (mid-request); ``python
  -m callhome flush`` then delivers what it left.
- ``cpu``: the host's own CPU (user + system, every thread) per delivered event of a
  long-running host: it tracks 400 events/s for ``CPU_WARMUP`` (2 s: threads started, the
  sender running, connections open), then its CPU is counted while it tracks 6 s more and
  flushes; for callhome and, in the same run, PostHog and Segment (to the shared ``sink.py``);
  the pacing loop alone (``none``) is measured too. Also the
  sender process's CPU per record and peak RSS (``status()["sender"]["resources"]``).
- ``backlog``: a backlog of 5 000 records queued while the collector answers 503, then
  the fault cleared and ``flush()``: records/s the detached sender delivers (end to end, and
  first to last arrival at the collector), its CPU per record and peak RSS; for comparison
  the same backlog delivered by the in-host thread sender (``sender="thread"``), over one
  connection only (chunks of 60 records, each flushed: the sender opens its second connection
  only for a backlog above ``PARALLEL_BACKLOG`` = 64), and to the shared ``sink.py``, which only
  counts (no sender may start until the backlog is queued: the benchmark holds its lock).

Each part uses a fresh collector (``_collector_ctl.py``) and a fresh temporary ``data_dir`` per
run; the senders a run started exit once their directory is removed (they are waited for). The
report names the code measured (commit, digest of ``callhome/``) and warns if it changed meanwhile.

    python bench/delivery.py [short] [kill] [cpu] [backlog] [--quick] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import _common as c

PARTS = ("short", "kill", "cpu", "backlog")
GOAL_ADDED_MS = 20.0
GOAL_LATENCY_S = 30.0
GOAL_LOST = 100
GOAL_DUPLICATES = 3
GOAL_HOST_CPU_US = 25.0
GOAL_SENDER_RPS = 3000.0
#: ``cpu``: seconds each host tracks before its CPU is counted (a long-running host's steady
#: state: threads started, the sender running, connections open).
CPU_WARMUP = 2.0
#: Records per flushed chunk in the one-connection variant (the sender parallelises above 64).
CHUNK = 60


# -- the backlog's host (``--child``) -----------------------------------------------------------
def child(mode: str, url: str, n: int, data_dir: str) -> None:
    """``process`` / ``thread``: queue ``n`` records while the collector fails, say so, wait for a
    line on stdin (the fault is cleared), flush. ``chunks``: ``n`` records, a flush every CHUNK.
    No SESSION record (``sessions=False``): exactly ``n`` records are sent."""
    import callhome

    callhome.init(product_id="bench-backlog", api_key=c.API_KEY, endpoint=url, domain="example.com",
                  data_dir=data_dir, call_home_interval=0, sessions=False, send_in_ci=True,
                  sender="thread" if mode == "thread" else "process")
    chunk = CHUNK if mode == "chunks" else n
    flushed, seconds, cpu = True, 0.0, 0.0
    for start in range(0, n, chunk):
        for i in range(start, min(start + chunk, n)):
            callhome.track("backlog", meta={"seq": i})
        if mode != "chunks":
            deadline = time.monotonic() + 60
            while callhome.status()["queued"] < n and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.1)  # sender.json is read at most once a second
            s = callhome.status()
            print(json.dumps({"queued": s["queued"], "sender": s["sender"]}), flush=True)
            sys.stdin.readline()
        cpu0, t0 = time.process_time(), time.monotonic()
        flushed = callhome.flush(timeout=120) and flushed
        seconds += time.monotonic() - t0
        cpu += time.process_time() - cpu0
        if mode == "chunks" and start == 0:  # the sender's figures once it has started (not timed)
            time.sleep(1.1)
            print(json.dumps({"queued": 0, "sender": callhome.status()["sender"]}), flush=True)
    time.sleep(1.2)
    s = callhome.status()
    print(json.dumps({"mode": mode, "n": n, "flush_ok": flushed, "flush_s": round(seconds, 3),
                      "host_cpu_s": round(cpu, 4), "delivered": s["delivered"], "dropped": s["dropped"],
                      "sender": s["sender"]}), flush=True)


# -- helpers ------------------------------------------------------------------------------------
class DataDir:
    """A fresh temporary ``data_dir``; on exit it is removed and the senders started for it are
    waited for (a sender exits once its product's directory is gone; after 10 s, SIGTERM)."""

    def __enter__(self) -> str:
        self.path = tempfile.mkdtemp(prefix="callhome-bench-delivery-")
        return self.path

    def __exit__(self, *exc: object) -> None:
        pids = sender_pids(self.path)
        deadline = time.monotonic() + 10
        while True:
            # again until gone: a sender may write its status file while the tree is being removed
            shutil.rmtree(self.path, ignore_errors=True)
            if not any(alive(pid) for pid in pids) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid in pids:
            if alive(pid):
                print(f"  note: sender {pid} ({describe(pid)}) still running 10 s after its directory was "
                      "removed: SIGTERM")
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(self.path, ignore_errors=True)


def sender_pids(data_dir: str) -> list:
    """The live senders of the products under ``data_dir``: ``python -m callhome _sender`` processes
    whose working directory (their product's directory) is there (Linux ``/proc``)."""
    pids = []
    root = os.path.realpath(data_dir) + os.sep
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"_sender" not in f.read():
                    continue
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # not a process, gone, or not ours
            continue
        if (cwd + os.sep).startswith(root) and alive(int(entry)):
            pids.append(int(entry))
    return pids


def describe(pid: int) -> str:
    """Where a process is and what it waits for (Linux ``/proc``), for a note."""
    facts = []
    for name, read in (("cwd", lambda: os.readlink(f"/proc/{pid}/cwd")),
                       ("waits in", lambda: open(f"/proc/{pid}/wchan").read()),
                       ("threads", lambda: str(len(os.listdir(f"/proc/{pid}/task"))))):
        try:
            facts.append(f"{name} {read()}")
        except OSError:
            pass
    return ", ".join(facts)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def queued_files(data_dir: str) -> int:
    """Batches still waiting in (or claimed from) every product's queue under ``data_dir``."""
    return sum(len(glob.glob(os.path.join(data_dir, "*", "queue-v1", sub, "*.chq*")))
               for sub in ("ready", "inflight"))


def launched(cmd: list, env: dict) -> tuple:
    """(wall seconds from fork to reaped, what the command printed on stdout and stderr), timed by
    ``_launch.py`` as in ``cli_startup.py``."""
    done = subprocess.run([sys.executable, "-S", os.path.join(c.BENCH, "_launch.py"), *cmd], env=env,
                          capture_output=True, cwd=c.REPO, timeout=120)
    out = done.stdout.decode(errors="replace")
    figures = re.search(r"(\S+) (\S+) (\S+) (\S+)\s*$", out)
    if done.returncode or figures is None or figures.group(3) != "0":
        raise RuntimeError(f"{' '.join(cmd)} failed: {out[-500:]}\n{done.stderr.decode()[-2000:]}")
    return float(figures.group(1)), out[:figures.start()], done.stderr.decode(errors="replace")


def sender_figures(sender: dict | None) -> dict:
    resources = (sender or {}).get("resources") or {}
    return {"sender_cpu_s": resources.get("cpu_seconds"), "sender_rss_mib": (
        round(resources["max_rss_kib"] / 1024, 1) if resources.get("max_rss_kib") else None),
        "sender_sent": (sender or {}).get("sent"), "sender_mode": (sender or {}).get("mode"),
        "sender_pid": (sender or {}).get("pid"),
        "spawned": (sender or {}).get("spawned")}


def load() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- 1. short runs --------------------------------------------------------------------------------
def short(runs: int) -> dict:
    env = c.child_env()
    bare = [sys.executable, "-c", "pass"]
    walls: dict = {"bare": [], "host": []}
    printed = []
    with c.FaultyCollector() as collector, DataDir() as data, DataDir() as warm:
        collector.fail_all("hang:0.3")
        host = c.bench_child("_short_host.py", collector.url, data)
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(c.REPO, "callhome")], env=env)
        launched(bare, env)  # warm-up: bytecode and page cache; its records go to a closed port
        launched(c.bench_child("_short_host.py", f"http://127.0.0.1:{c.free_port()}", warm), env)
        for i in range(runs):
            for name, cmd in (("bare", bare), ("host", host)):
                wall, out, err = launched(cmd, env)
                walls[name].append(wall)
                if name == "host" and (out or err):
                    printed.append({"run": i, "stdout": out[-300:], "stderr": err[-300:]})
        exited = time.time()
        deadline = time.monotonic() + 90
        while True:  # every run's events, and its SESSION record
            arrived = collector.rows("cli_run")
            if len(arrived["rows"]) >= 2 * runs and arrived["activities"].get("SESSION", 0) >= runs \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        all_in = time.time() - exited
        stats = collector.stats()
    base = c.median(walls["bare"])
    added = [(w - base) * 1000 for w in walls["host"]]
    rows = arrived["rows"]
    return {"runs": runs, "expected": 2 * runs, "arrived": len(rows), "distinct": len({r[0] for r in rows}),
            "duplicates": stats["duplicates"], "requests": stats["requests"],
            "activities": arrived["activities"],
            "last_after_exit_s": round(max(r[1] for r in rows) - exited, 2) if rows else None,
            "all_records_after_exit_s": round(all_in, 1),
            "printed": printed, "bare_ms": round(base * 1000, 1),
            "host_ms": round(c.median(walls["host"]) * 1000, 1),
            "added_ms_median": round(c.median(added), 1), "added_ms_max": round(max(added), 1),
            "added_ms_first": round(added[0], 1), "added_ms_all": [round(a, 1) for a in added]}


# -- 2. kill -9 durability ------------------------------------------------------------------------
def kill(kill_sender: bool, rate: int = 1000, after: float = 2.5) -> dict:
    with c.FaultyCollector() as collector, DataDir() as data, tempfile.TemporaryDirectory() as tmp:
        collector.fail_all("hang:2")
        ids_path = os.path.join(tmp, "ids.txt")
        host = subprocess.Popen(
            c.bench_child("_paced_host.py", "callhome", collector.url, rate, 600, data, ids_path),
            env=c.child_env(), cwd=c.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(after)
        senders = sender_pids(data)
        host.kill()
        host.wait()
        if kill_sender:
            for pid in senders:
                os.kill(pid, signal.SIGKILL)
            while any(alive(pid) for pid in senders):
                time.sleep(0.01)
        accepted, refused, last_seq = {}, 0, -1
        with open(ids_path) as f:
            for line in f:
                seq, _, event_id = line.strip().partition(" ")
                if not seq.isdigit() or not event_id:
                    continue  # a line cut short by the kill
                last_seq = max(last_seq, int(seq))
                if event_id == "None":
                    refused += 1
                else:
                    accepted[event_id] = int(seq)
        collector.fail_all(None)
        t0 = time.monotonic()
        if kill_sender:  # nothing runs for the product now: the CLI's foreground flush delivers the rest
            subprocess.run([sys.executable, "-m", "callhome", "flush", "--product", "bench-paced",
                            "--dir", data, "--timeout", "60"], capture_output=True, cwd=c.REPO,
                           env=c.child_env(CALLHOME_ENDPOINT=collector.url, CALLHOME_API_KEY=c.API_KEY))
        count, changed = -1, time.monotonic()
        while time.monotonic() - t0 < 90:
            now = len(collector.rows("paced")["rows"])
            if now != count:
                count, changed = now, time.monotonic()
            if queued_files(data) == 0 and time.monotonic() - changed >= 1.0:
                break
            time.sleep(0.25)
        drained_s = time.monotonic() - t0
        delivered = {e: meta.get("seq") for e, _, meta in collector.rows("paced")["rows"]}
        stats = collector.stats()
        left = queued_files(data)
    lost = sorted(seq for e, seq in accepted.items() if e not in delivered)
    return {"kill_sender": kill_sender, "senders_killed": len(senders) if kill_sender else 0,
            "rate": rate, "killed_after_s": after, "accepted": len(accepted), "refused": refused,
            "delivered": len(delivered), "lost": len(lost),
            "lost_seqs": [lost[0], lost[-1]] if lost else None,
            "beyond_ids_file": sum(1 for seq in delivered.values()
                                   if isinstance(seq, int) and seq > last_seq),
            "duplicates": stats["duplicates"], "requests": stats["requests"],
            "drained_s": round(drained_s, 1), "batches_left": left}


# -- 3. host CPU per delivered event --------------------------------------------------------------
def cpu(seconds: float, rate: int, repeat: int, say=print) -> dict:
    peers = c.available_peers(say)
    # callhome_x4: 4x the rate, to split callhome's fixed cost from its cost per event
    sdks = ["none", "callhome", "callhome_x4", *peers]
    samples: dict = {sdk: [] for sdk in sdks}
    with c.FaultyCollector() as collector:
        sink = c.Sink() if peers else None
        try:
            for _ in range(repeat):
                for sdk in sdks:
                    rx = sink if sdk in peers else collector
                    count = (lambda rx=rx: rx.events("paced")) if rx is collector else rx.events
                    name, times = sdk.split("_x")[0], (4 if sdk.endswith("_x4") else 1)
                    with DataDir() as data:
                        before = count()
                        result = c.run_json(c.bench_child("_paced_host.py", name, rx.url, rate * times,
                                                          seconds, data, "-", CPU_WARMUP))
                        time.sleep(0.2)  # the sink writes its count every 50 ms
                        result["received"] = count() - before
                    if sdk != "none" and result["received"] != result["tracked"]:
                        say(f"  WARNING: {sdk}: {result['received']} of {result['tracked']} events arrived: "
                            f"{json.dumps(result)[:600]}")
                    # every call of the measured window (after the warm-up) was delivered, or fewer
                    lost = result["tracked"] - result["received"] if sdk != "none" else 0
                    calls = result["measured"] - max(lost, 0)
                    result["cpu_us_per_event"] = round(result["cpu_s"] / max(calls, 1) * 1e6, 1)
                    result["events"] = calls
                    result.update(sender_figures(result.get("sender")))
                    if result.get("sender_cpu_s") and result.get("sender_sent"):
                        result["sender_cpu_us_per_record"] = round(
                            result["sender_cpu_s"] / result["sender_sent"] * 1e6)
                    result.pop("sender", None)
                    samples[sdk].append(result)
        finally:
            if sink:
                sink.close()
    out: dict = {"seconds": seconds, "rate": rate, "repeat": repeat, "peers": peers, "all": samples}
    loop = c.median([s["cpu_s"] for s in samples["none"]])
    for sdk in sdks:
        pick = sorted(samples[sdk], key=lambda s: s["cpu_us_per_event"])[len(samples[sdk]) // 2]
        net = (pick["cpu_s"] - loop) / max(pick["events"], 1)
        pick = dict(pick, net_cpu_us_per_event=round(net * 1e6, 1))
        out[sdk] = pick
    one, four = out["callhome"], out["callhome_x4"]
    if four["events"] > one["events"]:  # cpu = fixed per second + marginal per event
        marginal = (four["cpu_s"] - one["cpu_s"]) / (four["events"] - one["events"])
        out["marginal_us_per_event"] = round(marginal * 1e6, 1)
        out["fixed_ms_per_s"] = round((one["cpu_s"] - marginal * one["events"]) / seconds * 1000, 1)
    return out


# -- 4. sender throughput -------------------------------------------------------------------------
def hold_sender_lock(data_dir: str, product: str):
    """Take the product's ``locks/sender.lock`` (the lock a live sender holds) before its host runs:
    while it is held no sender starts; closing the returned file releases it."""
    import fcntl

    locks = os.path.join(data_dir, product, "queue-v1", "locks")
    os.makedirs(locks, mode=0o700)
    lock = open(os.path.join(locks, "sender.lock"), "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def backlog_run(mode: str, n: int) -> dict:
    """One backlog delivered. ``sink``: the detached sender to the shared ``sink.py`` (which only
    counts), no sender allowed to start until the backlog is queued (the benchmark holds its lock)."""
    sink = mode == "sink"
    with (c.Sink() if sink else c.FaultyCollector()) as rx, DataDir() as data:
        lock = hold_sender_lock(data, "bench-backlog") if sink else None
        rx_cpu0 = c.process_cpu_seconds(rx.proc.pid)
        host = c.bench_child("delivery.py", "--child", "process" if sink else mode, rx.url, n, data)
        proc = subprocess.Popen(host, env=c.child_env(), cwd=c.REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = ""
        try:
            if mode != "chunks":
                if lock is None:
                    rx.fail_all(503)
                first = proc.stdout.readline()  # all queued on disk; the sender backs off (or none runs)
                if lock is None:
                    rx.fail_all(None)
                else:
                    lock.close()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            out, err = proc.communicate(timeout=300)
            rx_cpu = c.process_cpu_seconds(rx.proc.pid)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = [json.loads(line) for line in (first + out).splitlines() if line.startswith("{")]
        if len(lines) < 2:
            raise RuntimeError(f"the backlog host printed no result:\n{out[-2000:]}\n{err[-3000:]}")
        before, result = lines[0], lines[-1]
        if sink:
            time.sleep(0.2)  # the sink writes its count every 50 ms
            got = rx.stats()
            received, failed = got.get("events", 0), 0
            span = (got["last"] - got["first"]) if got.get("first") is not None else 0
            spans, records = span, received - 1
        else:
            rows = rx.rows("backlog")["rows"]
            stats = rx.stats()
            received, failed = len(rows), stats["faults"]
            # first to last arrival, over runs of records sent by one cycle (a chunk, or the whole backlog)
            spans = records = 0
            size = CHUNK if mode == "chunks" else max(len(rows), 1)
            for start in range(0, len(rows), size):
                group = rows[start:start + size]
                spans += group[-1][1] - group[0][1]
                records += len(group) - 1
    result["queued_before"] = before.get("queued")
    result["received"], result["failed_requests"] = received, failed
    result["duplicates"] = stats["duplicates"] if not sink else max(received - n, 0)
    if rx_cpu0 is not None and rx_cpu is not None:  # the receiver's CPU (the failed requests' included)
        result["collector_cpu_us_per_record"] = round((rx_cpu - rx_cpu0) / max(received, 1) * 1e6)
    result["records_per_s"] = round(received / result["flush_s"]) if result["flush_s"] else None
    result["arrival_records_per_s"] = round(records / spans) if spans > 0 else None
    result.update(sender_figures(result.pop("sender")))
    if mode == "thread":  # the host's CPU during the flush: its thread sender's, and the flush's polling
        result["cpu_us_per_record"] = round(result["host_cpu_s"] / max(result["delivered"], 1) * 1e6)
        return result
    # the sender's CPU per record it sent after the host's first report (the backlog queued, or the
    # first chunk sent): CPU and count deltas of the same sender; else its whole life, start-up included
    start = sender_figures(before.get("sender"))
    same = start["sender_pid"] is not None and start["sender_pid"] == result["sender_pid"]
    used, sent = result["sender_cpu_s"], result["sender_sent"]
    if same and start["sender_cpu_s"] is not None:
        used, sent = used - start["sender_cpu_s"], sent - (start["sender_sent"] or 0)
    result["cpu_during_flush_only"] = same
    if used and sent:
        result["cpu_us_per_record"] = round(used / sent * 1e6)
    return result


def backlog(n: int, repeat: int) -> dict:
    modes = ("process", "thread", "chunks") + (("sink",) if c.peer_script("sink.py") else ())
    samples: dict = {mode: [] for mode in modes}
    for _ in range(repeat):
        for mode in modes:
            samples[mode].append(backlog_run(mode, n))
    out: dict = {"n": n, "repeat": repeat, "all": samples}
    for mode in modes:
        runs = sorted(samples[mode], key=lambda r: r["records_per_s"] or 0)
        out[mode] = runs[len(runs) // 2]
    return out


# -- driver, report, summary rows -----------------------------------------------------------------
def run(parts=PARTS, quick: bool = False, repeat: int | None = None, runs: int | None = None,
        quiet: bool = False) -> dict:
    say = (lambda *a: None) if quiet else print
    repeat = repeat or (1 if quick else 3)
    result: dict = {"quick": quick, "load_before": load(), "machine": c.machine(), "code": c.source_state()}
    if "short" in parts:
        result["short"] = short(runs or (5 if quick else 20))
    if "kill" in parts:
        result["kill"] = [kill(False)] + ([] if quick else [kill(True)])
    if "cpu" in parts:
        result["cpu"] = cpu(2.0 if quick else 6.0, 400, repeat, say)
    if "backlog" in parts:
        result["backlog"] = backlog(1000 if quick else 5000, repeat)
    result["load_after"] = load()
    result["code_after"] = c.source_state()
    if not quiet:
        report(result)
    return result


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(r: dict) -> None:
    c.banner(f"delivery out of the host ({'quick' if r['quick'] else 'full'}; load average before "
             f"{r['load_before']}, after {r['load_after']})")
    print(f"  code: {r['code']}")
    if r["code_after"] != r["code"]:
        print(f"  WARNING: callhome's code changed during the run (now {r['code_after']}): do not quote it")
    s = r.get("short")
    if s:
        print(f"  short runs: {s['runs']} runs of init + 2 track() + exit, collector answering after 0.3 s")
        print(f"    wall: bare {s['bare_ms']:.1f} ms, host {s['host_ms']:.1f} ms (medians); added over the "
              f"bare interpreter: median {s['added_ms_median']:.1f} ms, max {s['added_ms_max']:.1f} ms, "
              f"first run {s['added_ms_first']:.1f} ms; goal <= {GOAL_ADDED_MS:g} ms: "
              f"{_met(s['added_ms_median'] <= GOAL_ADDED_MS)}")
        print(f"    events arrived: {s['arrived']} of {s['expected']} ({s['distinct']} distinct ids, "
              f"{s['duplicates']} duplicates; all records: {s['activities']}, {s['requests']} requests): "
              f"{_met(s['arrived'] == s['distinct'] == s['expected'] and not s['duplicates'])}")
        latency = s["last_after_exit_s"]
        print(f"    last event arrived {latency} s after the last run's exit (every record, the SESSION ones "
              f"too, within {s['all_records_after_exit_s']} s); goal <= {GOAL_LATENCY_S:g} s: "
              f"{_met(latency is not None and latency <= GOAL_LATENCY_S)}")
        print(f"    runs that printed anything: {len(s['printed'])}" + "".join(
            f"\n      run {p['run']}: stdout {p['stdout']!r} stderr {p['stderr']!r}"
            for p in s["printed"][:3]))
    for k in r.get("kill") or []:
        what = "host and sender SIGKILLed" if k["kill_sender"] else "host SIGKILLed (the sender lives on)"
        print(f"  kill -9: {what} {k['killed_after_s']} s into {k['rate']:,} events/s, "
              "collector answering after 2 s")
        print(f"    accepted (ids in the file) {k['accepted']:,}, delivered {k['delivered']:,}, "
              f"lost {k['lost']} "
              f"(seqs {k['lost_seqs']}; goal <= {GOAL_LOST}: {_met(k['lost'] <= GOAL_LOST)}), duplicates "
              f"{k['duplicates']} (goal <= {GOAL_DUPLICATES}: {_met(k['duplicates'] <= GOAL_DUPLICATES)}); "
              f"{k['beyond_ids_file']} delivered were tracked after the file's last flush; drained "
              f"{k['drained_s']} s after the fault was cleared; batches left {k['batches_left']}")
    p = r.get("cpu")
    if p:
        print(f"  host CPU per delivered event, steady state: {p['rate']} events/s, {CPU_WARMUP:g} s of warm-up "
              f"then {p['seconds']:g} s measured, then flush (median of {p['repeat']})")
        for sdk in ["none", "callhome", "callhome_x4", *p["peers"]]:
            m = p[sdk]
            label = f"callhome ({4 * p['rate']}/s)" if sdk == "callhome_x4" else sdk
            extra = "" if sdk == "none" else (
                f", {m['net_cpu_us_per_event']:.1f} µs net of the loop; {m['events']:,} measured, all delivered: "
                f"{m['received'] == m['tracked']}; import {m['import_cpu_s'] * 1000:.0f} ms, start and warm-up "
                f"{m['warmup_cpu_s'] * 1000:.0f} ms CPU")
            print(f"    {label:20s} {m['cpu_us_per_event']:7.1f} µs/event (CPU {m['cpu_s']:.3f} s{extra})")
        ch = p["callhome"]
        print(f"    goal <= {GOAL_HOST_CPU_US:g} µs/event: "
              f"{_met(ch['cpu_us_per_event'] <= GOAL_HOST_CPU_US)}")
        if "marginal_us_per_event" in p:
            print(f"    callhome's CPU, split with the x4 run: {p['fixed_ms_per_s']} ms per second of "
                  f"tracking (the pacing loop, the worker's cycles, the flush) + "
                  f"{p['marginal_us_per_event']} µs per event")
        for sdk in p["peers"]:
            raw = c.ratio(p[sdk]["cpu_us_per_event"], ch["cpu_us_per_event"])
            net = c.ratio(p[sdk]["net_cpu_us_per_event"], ch["net_cpu_us_per_event"])
            print(f"    {sdk} / callhome: {c.fmt_ratio(raw)} (net of the loop: {c.fmt_ratio(net)})")
        print(f"    callhome's sender process: {ch.get('sender_cpu_s')} s CPU for {ch.get('sender_sent')} "
              f"records ({ch.get('sender_cpu_us_per_record')} µs/record, its start-up included), peak RSS "
              f"{ch.get('sender_rss_mib')} MiB; senders started: {ch.get('spawned')}")
    b = r.get("backlog")
    if b:
        print(f"  sender throughput: backlog of {b['n']:,} records (median of {b['repeat']})")
        names = {"process": "detached sender (default)", "thread": "thread sender in the host",
                 "chunks": f"detached, 1 connection ({CHUNK}/flush)",
                 "sink": "detached, to sink.py (counts only)"}
        for mode, name in names.items():
            m = b.get(mode)
            if m is None:
                continue
            print(f"    {name:38s} {m['records_per_s'] or 0:6,} records/s end to end ({m['flush_s']:.2f} s), "
                  f"{m['arrival_records_per_s'] or 0:6,}/s first to last arrival; "
                  f"{m.get('cpu_us_per_record')} µs CPU/record (the receiver's: "
                  f"{m.get('collector_cpu_us_per_record')}), RSS "
                  f"{c.fmt(m.get('sender_rss_mib'))} MiB; received {m['received']:,}, duplicates "
                  f"{m['duplicates']}, flush ok {m['flush_ok']}")
        rate = b["process"]["records_per_s"] or 0
        print(f"    goal >= {GOAL_SENDER_RPS:,.0f} records/s: {_met(rate >= GOAL_SENDER_RPS)}")


def rows(r: dict) -> list:
    out = []
    s = r.get("short")
    if s:
        out.append(c.Row(f"short runs (init, 2 track(), exit; server 0.3 s): added wall ms, median / max of "
                         f"{s['runs']}", f"{s['added_ms_median']:.1f} / {s['added_ms_max']:.1f}",
                         "", "", goal=f"<= {GOAL_ADDED_MS:g} ms", met=s["added_ms_median"] <= GOAL_ADDED_MS))
        ok = (s["arrived"] == s["distinct"] == s["expected"] and not s["duplicates"] and not s["printed"]
              and s["last_after_exit_s"] is not None and s["last_after_exit_s"] <= GOAL_LATENCY_S)
        out.append(c.Row("short runs: arrived exactly once / s after the last exit / runs that printed",
                         f"{s['arrived']}/{s['expected']}, dup {s['duplicates']} / "
                         f"{s['last_after_exit_s']} s / {len(s['printed'])}",
                         "", "", goal=f"all, 0 / <= {GOAL_LATENCY_S:g} s / 0", met=ok))
    for k in r.get("kill") or []:
        out.append(c.Row(f"kill -9 of the host{' and the sender' if k['kill_sender'] else ''} at "
                         f"{k['rate']:,} events/s: accepted / lost / duplicates",
                         f"{k['accepted']:,} / {k['lost']} / {k['duplicates']}", "", "",
                         goal=f"lost <= {GOAL_LOST}, dup <= {GOAL_DUPLICATES}",
                         met=k["lost"] <= GOAL_LOST and k["duplicates"] <= GOAL_DUPLICATES))
    p = r.get("cpu")
    if p:
        ch = p["callhome"]

        def peer(sdk):
            return c.fmt(p[sdk]["cpu_us_per_event"]) if sdk in p else "n/a"

        ratios = " / ".join(c.fmt_ratio(c.ratio(p.get(sdk, {}).get("cpu_us_per_event"),
                                                ch["cpu_us_per_event"])) for sdk in ("posthog", "segment"))
        out.append(c.Row(f"host CPU µs per delivered event ({p['rate']}/s, steady: {p['seconds']:g} s after "
                         f"{CPU_WARMUP:g} s of warm-up, then flush)",
                         c.fmt(ch["cpu_us_per_event"]), peer("posthog"), peer("segment"), ratios,
                         f"<= {GOAL_HOST_CPU_US:g} µs", ch["cpu_us_per_event"] <= GOAL_HOST_CPU_US))
        if "marginal_us_per_event" in p:
            out.append(c.Row("host CPU split: ms per second of tracking + µs per event",
                             f"{p['fixed_ms_per_s']} + {p['marginal_us_per_event']}", "", "", goal="(info)"))
        out.append(c.Row("sender process: CPU µs per record (start-up included) / peak RSS MiB",
                         f"{ch.get('sender_cpu_us_per_record')} / {ch.get('sender_rss_mib')}", "", "",
                         goal="(info)"))
    b = r.get("backlog")
    if b:
        m = b["process"]
        out.append(c.Row(f"sender: records/s, backlog of {b['n']:,} (thread sender; one connection, "
                         "first to last arrival)",
                         f"{m['records_per_s']:,} ({b['thread']['records_per_s']:,}; "
                         f"{b['chunks']['arrival_records_per_s']:,})", "", "",
                         goal=f">= {GOAL_SENDER_RPS:,.0f}/s",
                         met=(m["records_per_s"] or 0) >= GOAL_SENDER_RPS))
        out.append(c.Row("sender: CPU µs per record / peak RSS MiB", f"{m.get('cpu_us_per_record')} / "
                         f"{m.get('sender_rss_mib')}", "", "", goal="(info)"))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, url, n, data_dir = sys.argv[2:6]
        child(mode, url, int(n), data_dir)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller counts (smoke test, not for the docs)")
    parser.add_argument("--repeat", type=int,
                        help="runs of `cpu` and `backlog` (median; default 3, 1 with --quick)")
    parser.add_argument("--runs", type=int, help="runs of `short` (default 20, 5 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="save the raw results as JSON")
    args = parser.parse_args()
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))} (choose from {', '.join(PARTS)})")
    result = run(args.parts or PARTS, args.quick, args.repeat, args.runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
