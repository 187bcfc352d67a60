"""Shared helpers of the benchmarks: paths, child processes, loopback receivers, statistics.

Nothing here is machine-specific: the peer scripts are looked up at ``../shared/bench`` next to
the repository (override with ``CALLHOME_BENCH_PEERS=/path/to/dir``); when they are absent,
the benchmarks say so and report callhome's figures without peer ratios.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
PEERS_DIR = (os.environ.get("CALLHOME_BENCH_PEERS")
             or os.path.normpath(os.path.join(REPO, "..", "shared", "bench")))
API_KEY = "bench-key"
#: Bytecode of every child goes here (never into the checkout), so that a child imports callhome
#: and the peers from cached bytecode as an installed wheel would, whatever PYTHONDONTWRITEBYTECODE says.
PYCACHE = os.path.join(tempfile.gettempdir(), "callhome-bench-pycache")

#: Variables that would switch callhome off (or make it print instead of send) in a child.
_OPTOUT = re.compile(r"^(DO_NOT_TRACK|CALLHOME_.*|.*_TELEMETRY_DISABLED)$")

if REPO not in sys.path:
    sys.path.insert(0, REPO)


# -- peers ------------------------------------------------------------------------------------
def peer_script(name: str) -> str | None:
    """The path of a shared peer script (``sink.py``, ``anchor_overhead.py``, ``anchor_cli.py``), or None."""
    path = os.path.join(PEERS_DIR, name)
    return path if os.path.isfile(path) else None


def peer_available(sdk: str) -> tuple[bool, str]:
    """Whether the peer SDK and the shared scripts are here; if not, why (printed by the caller)."""
    if peer_script("anchor_overhead.py") is None:
        return False, f"peer scripts not found in {PEERS_DIR} (set CALLHOME_BENCH_PEERS)"
    module = {"posthog": "posthog", "segment": "segment.analytics"}[sdk]
    probe = subprocess.run([sys.executable, "-c", f"import importlib.util as u; u.find_spec({module!r})"],
                           env=child_env(), capture_output=True)
    if probe.returncode:
        return False, f"{module} is not installed (python -m pip install -e '.[bench]')"
    return True, ""


# -- child processes --------------------------------------------------------------------------
def available_peers(say=print) -> list:
    """The peer SDKs installed here (``posthog``, ``segment``), saying why any other is skipped."""
    peers = []
    for sdk in ("posthog", "segment"):
        ok, why = peer_available(sdk)
        if ok:
            peers.append(sdk)
        else:
            say(f"  {sdk}: skipped: {why}")
    return peers


def child_env(**extra: str) -> dict:
    """The environment of every child: the checkout importable, bytecode cached, no opt-outs."""
    env = {k: v for k, v in os.environ.items() if not _OPTOUT.match(k)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([REPO] + inherited)
    env.update(extra)
    return env


def clean_python(tmp: str) -> tuple:
    """``(python, env)``: a venv of this Python with no ``.pth`` hooks, and an environment that finds
    the checkout and this interpreter's site-packages (``PYTHONPATH`` runs no ``.pth``); or
    ``(None, why)`` when a venv cannot be made."""
    import sysconfig

    target = os.path.join(tmp, "venv")
    done = subprocess.run([sys.executable, "-m", "venv", "--without-pip", target],
                          capture_output=True, text=True)
    python = os.path.join(target, "Scripts" if os.name == "nt" else "bin", "python")
    if done.returncode or not os.path.exists(python):
        return None, f"cannot create a venv: {done.stderr.strip()[-300:]}"
    paths = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    return python, child_env(PYTHONPATH=os.pathsep.join(dict.fromkeys([REPO, *paths])))


def removed_optouts() -> list:
    return sorted(k for k in os.environ if _OPTOUT.match(k))


def run_json(cmd: list, timeout: float = 300, env: dict | None = None) -> dict:
    """Run a child that prints one JSON object as its last stdout line; that object."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or child_env(),
                          cwd=REPO)
    for line in reversed(done.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{' '.join(cmd)} printed no result (exit {done.returncode}):\n"
                       f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def bench_child(script: str, *args: object) -> list:
    return [sys.executable, os.path.join(BENCH, script), *map(str, args)]


# -- loopback receivers -----------------------------------------------------------------------
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited early with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate ``proc``, and kill it if it does not exit within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Collector:
    """callhome's own collector in a separate process: ``python -m callhome collector``.

    If that command fails to start (e.g. the CLI module is being edited), the collector's own
    entry point (``callhome.collector.server.main``) is tried, and a note is printed.
    """

    kind = "collector"

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="callhome-bench-collector-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--port", str(self.port), "--db", os.path.join(self.tmp.name, "events.sqlite3"),
                "--api-key", API_KEY]
        direct = ("import sys; from callhome.collector.server import main; sys.exit(main(sys.argv[1:]))")
        errors = []
        commands = ([sys.executable, "-m", "callhome", "collector", *args],
                    [sys.executable, "-c", direct, *args])
        for cmd in commands:
            log = open(os.path.join(self.tmp.name, "collector.log"), "w+")
            self.proc = subprocess.Popen(cmd, env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                                         stderr=log)
            try:
                wait_port(self.port, self.proc)
                if errors:
                    print(f"  note: `python -m callhome collector` failed ({errors[0]}); started "
                          "callhome.collector.server.main instead", flush=True)
                return
            except RuntimeError as exc:
                log.seek(0)
                tail = log.read().strip().splitlines()[-1:] or [str(exc)]
                errors.append(tail[0])
                self._stop()
            finally:
                log.close()
        self.tmp.cleanup()
        raise RuntimeError(f"the collector does not start: {' / '.join(errors)}")

    def stats(self) -> dict:
        import urllib.request

        request = urllib.request.Request(self.url + "/stats", headers={"X-API-KEY": API_KEY})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def events(self) -> int:
        return int(self.stats().get("events", 0))

    def _stop(self) -> None:
        stop_process(self.proc)

    def close(self) -> None:
        self._stop()
        self.tmp.cleanup()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaultyCollector:
    """callhome's collector in its own process (``_collector_ctl.py``), whose faults the benchmark
    scripts: ``fail_all("hang:0.3")`` answers every request after 0.3 s, ``fail_all(None)`` clears."""

    kind = "collector"

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="callhome-bench-collector-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(os.path.join(self.tmp.name, "collector.log"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(BENCH, "_collector_ctl.py"), str(self.port),
             os.path.join(self.tmp.name, "events.sqlite3"), API_KEY],
            env=child_env(), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True)
        try:
            wait_port(self.port, self.proc)
        except Exception:
            self.close()
            raise

    def ask(self, op: str, **args: object) -> dict:
        self.proc.stdin.write(json.dumps(dict(args, op=op)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"the collector exited: {self._log.read()[-2000:]}")
        return json.loads(line)

    def fail_all(self, action: object) -> None:
        self.ask("fail", action=action)

    def stats(self) -> dict:
        return self.ask("stats")

    def events(self, activity: str | None = None) -> int:
        """Records stored (of ``activity`` only, if given)."""
        if activity is not None:
            return int(self.ask("count", activity=activity)["count"])
        return int(self.stats().get("events", 0))

    def rows(self, activity: str) -> dict:
        """``{"rows": [[event_id, received_at, meta], ...], "activities": {name: count}}``."""
        return self.ask("rows", activity=activity)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_process(self.proc)
        self._log.close()
        self.tmp.cleanup()

    def __enter__(self) -> FaultyCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sink:
    """The shared ``sink.py`` (asyncio, keep-alive, counts events; answers 200 to any path)."""

    kind = "sink"

    def __init__(self) -> None:
        script = peer_script("sink.py")
        if script is None:
            raise FileNotFoundError(f"sink.py not found in {PEERS_DIR}")
        self.tmp = tempfile.TemporaryDirectory(prefix="callhome-bench-sink-")
        self.state_path = os.path.join(self.tmp.name, "state.json")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, script, str(self.port), self.state_path],
                                     env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc)
        except Exception:
            self.close()
            raise

    def stats(self) -> dict:
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"events": 0, "requests": 0}

    def events(self) -> int:
        return int(self.stats().get("events", 0))

    def close(self) -> None:
        stop_process(self.proc)
        self.tmp.cleanup()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds another process has used so far (Linux ``/proc``; else None)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def receiver(prefer_sink: bool = True):
    """The sink when asked for and present (the peers' harness), else callhome's collector."""
    if prefer_sink and peer_script("sink.py"):
        return Sink()
    return Collector()


# -- statistics and formatting ----------------------------------------------------------------
def median(values: list) -> float:
    import statistics

    return statistics.median(values)


def percentile(sorted_values: list, q: float) -> float:
    return sorted_values[min(int(len(sorted_values) * q), len(sorted_values) - 1)]


def ratio(peer: float | None, ours: float | None) -> float | None:
    if peer is None or ours is None or ours <= 0:
        return None
    return peer / ours


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}x"


class Row:
    """One line of the summary table (``run_all.py``)."""

    def __init__(self, what: str, callhome: str, posthog: str = "n/a", segment: str = "n/a",
                 ratio: str = "", goal: str = "", met: bool | None = None) -> None:
        self.what, self.callhome, self.posthog, self.segment = what, callhome, posthog, segment
        self.ratio, self.goal, self.met = ratio, goal, met

    def cells(self) -> list:
        met = "" if self.met is None else ("yes" if self.met else "**NO**")
        return [self.what, self.callhome, self.posthog, self.segment, self.ratio, self.goal, met]


HEADER = ["what", "callhome", "posthog", "segment", "ratio (peer / callhome)", "goal", "met?"]


def table(rows: list, markdown: bool = True) -> str:
    lines = [HEADER] + [r.cells() for r in rows]
    if markdown:
        out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines[1:]]
        return "\n".join(out)
    widths = [max(len(str(c[i])) for c in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) for cells in lines)


def machine() -> str:
    import platform

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu or platform.processor() or platform.machine()}), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def source_state() -> str:
    """The checkout's commit and a digest of every ``callhome/`` source file's content: taken before
    and after a run, it tells whether the code changed under the run (an edit, a commit, a checkout)."""
    import hashlib

    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(os.path.join(REPO, "callhome"))):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, REPO).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        head = "unknown"
    return f"{head}, callhome/ sources {digest.hexdigest()[:12]}"


def banner(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)
