"""Every fenced code block of README.md and docs/*.md runs, or says why it cannot.

What a block is comes from its info string:

- ``python``: run in a fresh interpreter (``sys.executable``). A block whose first line is a comment
  naming a file (``# acme/cli.py``) is also written to that path in the working directory, and run
  as an import of that file (not as ``__main__``, which would parse the test's arguments).
- ``pycon``: an interactive session, run with :mod:`doctest` in a fresh interpreter. A comment
  ``# cwd = PATH`` in it sets the working directory.
- ``sh``: run with ``bash`` (``set -euo pipefail``); ``curl`` fails on an HTTP error status, so a
  request the server refuses fails the block. A block that is a single ``python -m callhome
  collector ...`` command runs in the background for the page's later blocks and is stopped
  (SIGTERM, exit status 0) at the end of the page; its ``# callhome collector listening on ...``
  line, if the page shows one, must be what the collector prints.
- ``console``: a transcript. Every ``$ `` command runs with bash and must exit 0, or ``N`` when the
  line ends with ``# exits N``. Each output line the page shows (``...`` elides) must be among the
  lines the command printed (stdout and stderr), compared with every token that holds a digit
  (times, ids, counts, versions) blanked and spaces collapsed; a table row (columns two spaces
  apart) is compared by its first column only, since its values depend on the machine.
- ``json``: must parse with :func:`json.loads`; a ``{"payload": ...}`` example must also pass
  :func:`callhome.schema.validate`.
- ``text``: output, a diagram or a synopsis: not run.

An HTML comment on the line before the fence changes that:

- ``<!-- not run: REASON -->``: not run (a ``python`` block must still compile, a ``sh`` block must
  pass ``bash -n``); the reason is required.
- ``<!-- slow: REASON -->``: run on its own by :func:`test_slow_block` (``pytest.mark.slow``).

Isolation. Every block runs in a temporary working directory with a temporary ``HOME`` and XDG
directories, without the machine's ``CALLHOME_*``, ``REO_*``, ``DO_NOT_TRACK``,
``*_TELEMETRY_DISABLED`` and CI variables, and with ``CALLHOME_SENDER_IDLE=2`` (as in conftest) so
that the senders the blocks start exit soon. Python processes (the blocks, the commands they run and
the senders they start) get a ``sitecustomize`` that refuses connections and name look-ups beyond
loopback, so a block that uses the default endpoint (Reo.Dev) queues and retries but sends nothing;
run ``sh`` and ``console`` blocks may only name loopback URLs. A page that starts a collector (a
``python -m callhome collector`` block, or ``CollectorServer(`` in Python) runs its blocks in order
in one shared directory, so later blocks see what earlier ones set up; other pages give every block
a fresh one. Every process a page started is stopped at its end.

The test changes a block's text only by the substitutions in :data:`SUBSTITUTIONS`.
"""

from __future__ import annotations

import datetime as dt
import doctest
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass, field

import pytest
import requests
from freezegun import freeze_time

from callhome.collector import CollectorServer
from callhome.optout import CI_VARIABLES
from callhome.schema import AGGREGATE_PATH, USAGE_PATH, validate

from conftest import ROOT, wait_until

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

#: The only changes made to a block before it runs: (page, or "*" for every page; text; replacement).
#: ``{port}`` is a free loopback port chosen per page, ``{home}`` the block's temporary ``HOME``,
#: ``{root}`` this checkout.
SUBSTITUTIONS = [
    # the pages' collectors listen on 8765; a free port lets the suite run beside anything else
    ("*", "8765", "{port}"),
    # the pages' example home directory: a path printed by a transcript, a path redacted by privacy.md
    ("*", "/home/me", "{home}"),
    # benchmarks.md's commands are run "from the repository root"; the test runs them from a temporary one
    ("docs/benchmarks.md", "python bench/", "python {root}/bench/"),
]

RUN_KINDS = {"python", "pycon", "sh", "console"}
CHECKED_KINDS = {"json"}
KINDS = RUN_KINDS | CHECKED_KINDS | {"text"}
TIMEOUT = 60  # seconds for one block or command: a hang fails the test instead of the suite's timeout

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\s]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not run|slow)\s*:\s*(?P<reason>.*?)\s*-->\s*$")
_COLLECTOR = re.compile(r"^python -m callhome collector\b")
_URL = re.compile(r"https?://([^/\s'\"]+)")
_LOOPBACK_HOSTS = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:[\w{}]+)?$")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    kind: str
    text: str
    marker: str | None = None  # "not run" or "slow"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.kind in RUN_KINDS and self.marker is None


def blocks_of(page: str) -> list[Block]:
    """The fenced blocks of one page, in order, dedented to their fence."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        lines = f.read().split("\n")
    found, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):  # the rest of the page would be taken for code, and its blocks lost
            raise ValueError(f"{page}:{i + 1}: this fence is never closed")
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        block = Block(page, i + 1, opening.group("info").lower(), "\n".join(body) + "\n")
        marker = _MARKER.match(lines[i - 1]) if i else None
        if marker:
            block.marker, block.reason = marker.group("kind"), marker.group("reason")
        found.append(block)
        i = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def starts_a_collector(block: Block) -> bool:
    if block.kind == "sh":
        return any(_COLLECTOR.match(command) for command in commands_of(block.text))
    return block.kind == "python" and "CollectorServer(" in block.text


def commands_of(script: str) -> list[str]:
    """A shell script's commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def substitute(block: Block, port: int, home: str) -> str:
    """The block's text as the test runs it: with :data:`SUBSTITUTIONS` applied, and nothing else."""
    text = block.text
    for page, old, new in SUBSTITUTIONS:
        if page in ("*", block.page):
            text = text.replace(old, new.format(port=port, home=home, root=ROOT))
    return text


# -- the sandbox ------------------------------------------------------------------------------------
_GUARD = '''\
"""Written by tests/test_docs.py: a documentation block's Python processes reach loopback only."""
import ipaddress
import socket


def _loopback(host):
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _literal(host):
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        raise ConnectionRefusedError(111, "tests/test_docs.py allows loopback only, not %s" % (address[0],))


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    # a literal address needs no look-up (a foreign one is refused at connect); a name would ask DNS
    if not (_loopback(host) or _literal(host)):
        raise socket.gaierror(socket.EAI_NONAME, "tests/test_docs.py allows loopback only, not %s" % (host,))
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''

_SH_PREAMBLE = '''\
set -euo pipefail
curl() { command curl --fail-with-body --show-error --max-time 20 "$@"; }
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Sandbox:
    """A temporary HOME, working directory and environment for the blocks of a page (or of one block)."""

    top: str
    port: int
    marker: str  # a value in every process's environment, to find them at the end
    home: str = field(init=False)
    work: str = field(init=False)
    env: dict = field(init=False)

    def __post_init__(self) -> None:
        self.home, self.work = os.path.join(self.top, "home"), os.path.join(self.top, "work")
        scratch, guard, bin_dir = (os.path.join(self.top, name) for name in ("scratch", "guard", "bin"))
        for folder in (self.home, self.work, scratch, guard, bin_dir):
            os.makedirs(folder, exist_ok=True)
        with open(os.path.join(guard, "sitecustomize.py"), "w") as f:
            f.write(_GUARD)
        # `callhome` is the console script installed beside this interpreter (not another one on PATH);
        # `acme` is the console script cli.md's example product would install
        script = os.path.join(os.path.dirname(sys.executable), "callhome")
        installed = os.access(script, os.X_OK) and not os.path.isdir(script)
        shims = {"callhome": f'exec "{script}" "$@"' if installed else f'exec "{sys.executable}" -m callhome "$@"',
                 "acme": f'exec "{sys.executable}" -m acme.cli "$@"'}
        for name, line in shims.items():
            path = os.path.join(bin_dir, name)
            with open(path, "w") as f:
                f.write(f"#!/bin/sh\n{line}\n")
            os.chmod(path, 0o755)
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith(("CALLHOME_", "REO_")) or k.endswith("_TELEMETRY_DISABLED")
                       or k in CI_VARIABLES or k in ("CI", "BUILD_ID", "BUILD_URL", "PROJECT_ID", "DO_NOT_TRACK")
                       or k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"))}
        env.update(HOME=self.home, XDG_STATE_HOME=os.path.join(self.home, ".local", "state"),
                   XDG_CONFIG_HOME=os.path.join(self.home, ".config"),
                   XDG_DATA_HOME=os.path.join(self.home, ".local", "share"),
                   XDG_CACHE_HOME=os.path.join(self.home, ".cache"), TMPDIR=scratch,
                   PYTHONPATH=os.pathsep.join([guard, ROOT]), PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
                   CALLHOME_SENDER_IDLE="2", DOCS_TEST_MARKER=self.marker, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONHOME", None)
        self.env = env

    def substitute(self, block: Block) -> str:
        return substitute(block, port=self.port, home=self.home)

    def script(self, block: Block, suffix: str) -> str:
        """A file outside the working directory holding the block (tracebacks then name the page)."""
        name = re.sub(r"\W", "_", block.page) + f"_line{block.line}{suffix}"
        return os.path.join(self.top, "scratch", name)


@dataclass
class Page:
    """Runs a page's blocks; stops every process it started."""

    sandbox_root: str
    shared: bool
    port: int = field(default_factory=free_port)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    background: list = field(default_factory=list)
    timeout: float = TIMEOUT
    _sandbox: Sandbox | None = None
    _count: int = 0

    def sandbox(self) -> Sandbox:
        if self._sandbox is None or not self.shared:
            self._count += 1
            self._sandbox = Sandbox(os.path.join(self.sandbox_root, f"s{self._count}"), self.port, self.marker)
        return self._sandbox

    def run(self, block: Block) -> None:
        sandbox = self.sandbox()
        text = sandbox.substitute(block)
        {"python": self._python, "pycon": self._pycon, "sh": self._sh, "console": self._console}[block.kind](
            block, text, sandbox)

    def _python(self, block: Block, text: str, sandbox: Sandbox) -> None:
        named = re.match(r"#\s*([\w./-]+\.py)\s*\n", text)
        if named:
            target = os.path.join(sandbox.work, named.group(1))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(text)
            code = f"import runpy; runpy.run_path({target!r}, run_name='docs_block')"
            argv = [sys.executable, "-c", code]
        else:
            path = sandbox.script(block, ".py")
            with open(path, "w") as f:
                f.write(text)
            argv = [sys.executable, path]
        self._check(block, argv, sandbox)

    def _pycon(self, block: Block, text: str, sandbox: Sandbox) -> None:
        cwd = re.search(r"#\s*cwd\s*=\s*(\S+)", text)
        directory = cwd.group(1) if cwd else sandbox.work
        os.makedirs(directory, exist_ok=True)
        path = sandbox.script(block, ".txt")
        with open(path, "w") as f:
            f.write(text)
        code = textwrap.dedent(f"""
            import doctest, sys
            failed, _ = doctest.testfile({path!r}, module_relative=False, optionflags=doctest.ELLIPSIS)
            sys.exit(1 if failed else 0)
        """)
        self._check(block, [sys.executable, "-c", code], sandbox, cwd=directory)

    def _sh(self, block: Block, text: str, sandbox: Sandbox) -> None:
        commands = commands_of(text)
        if len(commands) == 1 and _COLLECTOR.match(commands[0]):
            self._start_collector(block, text, commands[0], sandbox)
            return
        self._check(block, ["bash", "-c", _SH_PREAMBLE + text], sandbox)

    def _check(self, block: Block, argv: list, sandbox: Sandbox, cwd: str | None = None) -> None:
        try:
            done = subprocess.run(argv, cwd=cwd or sandbox.work, env=sandbox.env, capture_output=True, text=True,
                                  timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{block.where}: still running after {self.timeout} s\n{e.stdout}\n{e.stderr}")
        assert done.returncode == 0, (f"{block.where}: exit status {done.returncode}\n--- stdout\n{done.stdout}"
                                      f"\n--- stderr\n{done.stderr}")

    def _start_collector(self, block: Block, text: str, command: str, sandbox: Sandbox) -> None:
        log = sandbox.script(block, ".stderr")
        with open(log, "w") as err:
            process = subprocess.Popen(["bash", "-c", "exec " + command], cwd=sandbox.work, env=sandbox.env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.background.append((block, process, log))

        def first_line() -> str | None:
            with open(log) as f:
                line = f.readline()
            return line.strip() if line.endswith("\n") or process.poll() is not None else None

        started = wait_until(first_line, timeout=TIMEOUT, interval=0.05)
        assert process.poll() is None and started, f"{block.where}: the collector did not start: {first_line()!r}"
        shown = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# callhome collector")]
        if shown:
            assert started == shown[0], f"{block.where}: the collector printed {started!r}"

    def _console(self, block: Block, text: str, sandbox: Sandbox) -> None:
        for command, expected, status in transcript(text):
            try:
                done = subprocess.run(["bash", "-c", _SH_PREAMBLE + command], cwd=sandbox.work, env=sandbox.env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=self.timeout)
            except subprocess.TimeoutExpired as e:
                pytest.fail(f"{block.where}: `{command}` still running after {self.timeout} s\n{e.stdout}")
            where = f"{block.where}: `{command}`"
            assert done.returncode == status, f"{where} exited {done.returncode}, not {status}:\n{done.stdout}"
            real = [shape(line) for line in done.stdout.splitlines() if line.strip()]
            missing = [line for line in expected if shape(line) not in real]
            assert not missing, f"{where} printed no line like {missing}; it printed:\n{done.stdout}"

    def close(self) -> None:
        """Stop the page's collectors (SIGTERM, as a person would), then anything its blocks left running."""
        problems = []
        for block, process, log in self.background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode != 0:
                with open(log) as f:
                    problems.append(f"{block.where}: the collector exited {process.returncode} on SIGTERM:\n{f.read()}")
        for pid in processes_marked(self.marker):  # the senders the blocks started, still in backoff or idle
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not wait_until(lambda: not processes_marked(self.marker), timeout=10, interval=0.05):
            for pid in processes_marked(self.marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert not problems, "\n".join(problems)


def processes_marked(marker: str) -> list[int]:
    """Live processes with ``DOCS_TEST_MARKER=<marker>`` in their environment (Linux; elsewhere none)."""
    needle = f"DOCS_TEST_MARKER={marker}".encode()
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
        except OSError:
            continue
        if needle in environ and not zombie:
            found.append(int(pid))
    return found


def transcript(text: str) -> list[tuple[str, list[str], int]]:
    """``(command, output lines shown, exit status)`` for each ``$ `` command of a console block."""
    steps: list[tuple[str, list[str], int]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            status = re.search(r"#\s*exits (\d+)\s*$", line)
            steps.append((line[2:], [], int(status.group(1)) if status else 0))
        elif steps and line.strip() and line.strip() != "...":
            steps[-1][1].append(line)
    return steps


def shape(line: str) -> str:
    """A line with what varies from run to run blanked: tokens holding a digit; a table row's values."""
    columns = re.split(r"\s{2,}", line.strip())
    kept = columns[0] if len(columns) > 1 else line.strip()
    return re.sub(r"[\w.:+-]*\d[\w.:+-]*", "<v>", " ".join(kept.split()))


# -- the tests --------------------------------------------------------------------------------------
def test_every_block_says_what_it_is():
    """An info string the test knows, markers with reasons, and no more markers than needed."""
    assert len(ALL_BLOCKS) > 50, "the pages' blocks were not found"
    problems = []
    for block in ALL_BLOCKS:
        if block.kind not in KINDS:
            problems.append(f"{block.where}: info string {block.kind!r} is none of {sorted(KINDS)}")
        elif block.marker and not block.reason:
            problems.append(f"{block.where}: a '{block.marker}' marker needs its reason")
        elif block.marker and block.kind not in RUN_KINDS:
            problems.append(f"{block.where}: a {block.kind} block is never run: it needs no marker")
    assert not problems, "\n".join(problems)


def test_run_blocks_name_only_loopback_urls():
    """The guard covers Python processes; a shell command's URL (curl) is held to loopback here."""
    foreign = [(block.where, host) for block in ALL_BLOCKS if block.runs and block.kind in ("sh", "console")
               for host in _URL.findall(block.text) if not _LOOPBACK_HOSTS.match(host)]
    assert not foreign, foreign


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.kind == "json"], ids=lambda b: b.where)
def test_json_block_parses(block):
    document = json.loads(block.text)
    if isinstance(document, dict) and set(document) == {"payload"}:  # a record as the agent sends it
        payload = document["payload"]
        errors = validate(payload, "aggregate" if "count" in payload else "usage")
        assert not errors, [str(e) for e in errors]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == "not run"], ids=lambda b: b.where)
def test_block_not_run_still_parses(block):
    if block.kind == "python":
        compile(block.text, block.where, "exec")
    elif block.kind == "pycon":
        doctest.DocTestParser().get_examples(block.text)
    elif block.kind in ("sh", "console"):
        text = block.text if block.kind == "sh" else "\n".join(c for c, _, _ in transcript(block.text))
        done = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.runs and b.page == p for b in ALL_BLOCKS)])
def test_page_blocks_run(page, tmp_path):
    blocks = [b for b in ALL_BLOCKS if b.page == page and b.runs]
    runner = Page(str(tmp_path), shared=any(starts_a_collector(b) for b in blocks))
    try:
        for block in blocks:
            runner.run(block)
    finally:
        runner.close()


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == "slow"], ids=lambda b: b.where)
def test_slow_block(block, tmp_path):
    runner = Page(str(tmp_path), shared=False, timeout=600)
    try:
        runner.run(block)
    finally:
        runner.close()


# -- reports.md: its examples are the collector's answers ------------------------------------------
_ENDPOINT = re.compile(r"^(?:###\s+|\*\*)`(GET|POST) (/v3/[^`]+)`")
_DAY = 86400


def at(date: str, hour: int, minute: int = 0) -> int:
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days * _DAY + hour * 3600 + minute * 60


def example_data() -> list[dict]:
    """The records behind reports.md's examples, as its table "The example data" describes them.

    Times are those the answers show: inst-a is first seen at 08:00 on Feb 26 (its ``CALL_HOME``)
    and last at 17:00 on Mar 8 (the end of its session); inst-b from 14:00 to 15:00; inst-c from
    11:00 to 12:00 (its exception). ``CALL_HOME``, session and exception records carry the system
    properties, events only the product version, as the agent sends them.
    """
    def record(event_at: int, client: str, activity: str, **meta) -> dict:
        return {"activity_type": activity, "source": "TELEMETRY", "domain": "example.com",
                "event_id": str(uuid.uuid4()), "event_at": event_at, "product_id": "acme-cli",
                "user_agent": "acme-cli/2.3.0 callhome/0.4.0 (Linux 6.1.0; x86_64) Python/3.11.2",
                "meta": {"callhome_version": "0.4.0", "installation_id": client, **meta}}

    def client(name: str, days: list[str], start: int, events: list[tuple[int, int, str, str]], end: int,
               hours: float, props: dict) -> list[dict]:
        found = []
        for date in days:
            found.append(record(at(date, start), name, "CALL_HOME", record_type="call_home", **props))
            found += [record(at(date, hour, minute), name, activity, category=category,
                             product_version=props["product_version"])
                      for hour, minute, category, activity in events]
            found.append(record(at(date, end), name, "SESSION", record_type="session", session_id=uuid.uuid4().hex,
                                session_kind="process", session_start=at(date, end) - int(hours * 3600),
                                session_end=at(date, end), duration=hours * 3600, closed_by="exit", **props))
        return found

    system = {"python_version": "3.11.2", "python_impl": "CPython", "locale": "en_US", "cpu_count": 8,
              "container": False}
    linux = dict(system, os="Linux", os_version="6.1.0", arch="x86_64", product_version="2.3.0",
                 license_type="purchased")
    darwin = dict(system, os="Darwin", os_version="23.4.0", arch="arm64", product_version="2.2.1",
                  license_type="evaluation")
    pro = dict(linux, product_edition="pro")
    records = client("inst-a", ["2024-02-26", "2024-02-27", "2024-02-29", "2024-03-04", "2024-03-05", "2024-03-08"],
                     8, [(9, 0, "cli", "build"), (10, 0, "cli", "deploy")], 17, 8.5, linux)
    records.append(dict(record(at("2024-03-08", 12), "inst-a", "build", category="cli", product_version="2.3.0"),
                        count=5, mode="DOMAIN"))
    records += client("inst-b", ["2024-02-27", "2024-03-01"], 14, [(14, 10, "ui", "open")], 15, 0.5, darwin)
    records.append(record(at("2024-03-01", 14, 30), "inst-b", "EXCEPTION", record_type="exception",
                          exception_class="KeyError", exception_function="lookup", exception_file="cache.py",
                          exception_line=7, stack="app.py:12 in main > cache.py:7 in lookup", handled=False, **darwin))
    records += client("inst-c", ["2024-03-05", "2024-03-06"], 11, [(11, 10, "cli", "build")], 12, 1.5, pro)
    records.append(record(at("2024-03-06", 12), "inst-c", "EXCEPTION", record_type="exception",
                          exception_class="acme.errors.ConfigError", exception_function="helper",
                          exception_file="lib.py", exception_line=40, stack="app.py:12 in main > lib.py:40 in helper",
                          handled=True, **pro))
    return records


def report_examples() -> list[tuple[str, str, dict | None, Block]]:
    """``(method, path, request body, answer block)`` for every example answer of reports.md.

    A json block belongs to the endpoint named by the last heading (or bold line) before it; a
    POST's blocks are request, answer, request, answer, ...; a GET's are answers.
    """
    with open(os.path.join(ROOT, "docs", "reports.md"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    groups: dict[tuple[str, str], list[Block]] = {}
    for block in (b for b in ALL_BLOCKS if b.page == "docs/reports.md" and b.kind == "json"):
        named = [m for m in map(_ENDPOINT.match, lines[:block.line]) if m]
        assert named, f"{block.where}: no endpoint heading above this example"
        groups.setdefault((named[-1].group(1), named[-1].group(2)), []).append(block)
    examples: list[tuple[str, str, dict | None, Block]] = []
    for (method, path), blocks in groups.items():
        if method == "GET":
            examples += [(method, path, None, block) for block in blocks]
            continue
        assert len(blocks) % 2 == 0, f"{blocks[-1].where}: a {path} request without its answer"
        examples += [(method, path, json.loads(request.text), answer)
                     for request, answer in zip(blocks[::2], blocks[1::2])]
    return examples


def test_reports_examples_are_the_collectors_answers():
    """reports.md says its examples are real answers: every one is asked again of a collector holding
    the example data, at the page's frozen clock, and must come back the same."""
    examples = report_examples()
    assert len(examples) >= 10, examples
    with CollectorServer(api_keys=["KEY"], report_users=[("analyst@example.com", "s3cret")]) as server, \
            requests.Session() as http:
        for payload in example_data():
            path = AGGREGATE_PATH if "count" in payload else USAGE_PATH
            reply = http.post(server.url + path, json={"payload": payload}, headers={"X-API-KEY": "KEY"}, timeout=10)
            assert reply.status_code == 200, reply.text
        with freeze_time("2024-03-12 12:00:00", tick=False):
            for method, path, body, block in examples:
                url = server.url + path.replace("{product_id}", "acme-cli")
                reply = http.request(method, url, json=body, timeout=10)
                assert reply.status_code == 200, f"{block.where}: {method} {path}: {reply.status_code} {reply.text}"
                expected = json.loads(substitute(block, port=server.port, home=""))
                assert unsigned(reply.json()) == unsigned(expected), f"{block.where}: {method} {path}"


def unsigned(answer):
    """A getDownloadUrl answer without its URL's token, which is signed with a secret made at start-up."""
    if isinstance(answer, dict) and isinstance(answer.get("url"), str):
        return dict(answer, url=re.sub(r"/file/[^/]+$", "/file/<token>", answer["url"]))
    return answer


@pytest.mark.slow
def test_python_blocks_pass_mypy_strict(tmp_path):
    """What a user's ``mypy --strict`` says of the documented snippets: callhome's public API is
    typed for them (each block is a module of its own; not-run blocks are checked too)."""
    pytest.importorskip("mypy")
    blocks = [b for b in ALL_BLOCKS if b.kind == "python"]
    for n, block in enumerate(blocks):
        (tmp_path / f"block_{n}.py").write_text(f"# {block.where}\n{block.text}", encoding="utf-8")
    # only the snippets are judged (callhome itself is checked by CI with the current dependencies)
    checked = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
                              "--cache-dir", str(tmp_path / ".mypy_cache"), "--ignore-missing-imports",
                              *sorted(str(p) for p in tmp_path.glob("block_*.py"))],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    def on_the_page(match: re.Match[str]) -> str:  # the block's file starts with one line of its own
        block = blocks[int(match.group(1))]
        return f"{block.page}:{block.line + int(match.group(2)) - 1}"

    report = "\n".join(re.sub(r"^.*?block_(\d+)\.py:(\d+)", on_the_page, line) for line in checked.stdout.splitlines())
    assert checked.returncode == 0, report
