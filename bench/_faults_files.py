"""Bad files in the queue, for ``faults.py``: each kind planted beside good records.

    python bench/_faults_files.py

For each kind, a fresh temporary ``data_dir`` gets the bad file in its product's ``ready/``
(garbage, a torn last line, a CRC that does not match, a directory, a FIFO, a line of 20 MB,
JSON nested 100,000 deep under a valid CRC, a ``null`` record, a record without ``payload``, a
name that is no batch's, a link to ``/dev/zero``, an empty file, a file of newlines, a name that
claims a huge count and attempt, and, unless running as root, a file nobody may read). Where the
kind is a bad line, good records surround it in the same file. Then a host in a fresh process
tracks three events and calls ``flush(5)`` until it returns True (at most 15 s: the first call
may say False, since a record dropped meanwhile was not delivered), against callhome's collector
in a process of its own.

One row per kind: whether the bad file left ``ready/`` and ``inflight/`` (quarantined in
``corrupt/``, or read past and removed with its batch), whether ``flush()`` returned True, the
good records the collector stored out of those planted and tracked, whether the host printed
anything, the seconds until ``flush()`` returned True (or gave up), and how many records
``status()["dropped"]["corrupt"]`` counted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

PRODUCT = "bench-files"
HOST_EVENTS = 3
#: The host: three events, then flush() until True; one JSON line (anything else is "printed").
HOST = """
import json, sys, time
import callhome
product, kind, url, data_dir = sys.argv[1:5]
callhome.init(product_id=product, api_key={key!r}, endpoint=url, domain="example.com", data_dir=data_dir,
              call_home_interval=0, sessions=False, send_in_ci=True)
for _ in range({events}):
    callhome.track("host_" + kind)
started = time.monotonic()
flushed = False
while not flushed and time.monotonic() - started < 15:
    flushed = callhome.flush(5)
seconds = time.monotonic() - started
print(json.dumps({{"flushed": flushed, "seconds": seconds, "dropped": callhome.status()["dropped"]}}))
"""
#: A host that has not answered by then is stuck (a FIFO opened for reading blocks forever).
HOST_TIMEOUT = 60.0


# -- what is planted ---------------------------------------------------------------------------
def _record(kind: str, i: int) -> bytes:
    """A framed record the collector accepts, of activity ``planted_<kind>``."""
    from callhome.queue import frame

    payload = {"source": "TELEMETRY", "environment": "PRODUCTION", "product_id": PRODUCT,
               "user_agent": "bench-files/1.0", "activity_type": "planted_" + kind,
               "event_id": os.urandom(16).hex(), "event_at": int(time.time()), "meta": {"i": i}}
    return frame({"v": 1, "kind": "usage", "payload": payload})


def _crc_line(data: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(data), data)


def _name(count: int, size: int = 0) -> str:
    from callhome.queue import entry_name

    return entry_name(time.time(), time.time(), 0, 0, count, size, os.urandom(8).hex())


def _between(bad: bytes):
    """A good record, ``bad``, a good record: two good ones to deliver."""
    def plant(ready: str, kind: str) -> tuple:
        data = _record(kind, 0) + bad + _record(kind, 1)
        return _file(ready, _name(3, len(data)), data), 2
    return plant


def _torn(ready: str, kind: str) -> tuple:
    data = _record(kind, 0) + _record(kind, 1) + _record(kind, 2)[:-20]
    return _file(ready, _name(3, len(data)), data), 2


def _crc_flip(ready: str, kind: str) -> tuple:
    flipped = _record(kind, 1)
    data = _record(kind, 0) + b"%08x" % (int(flipped[:8], 16) ^ 1) + flipped[8:] + _record(kind, 2)
    return _file(ready, _name(3, len(data)), data), 2


def _content(data: bytes, count: int):
    def plant(ready: str, kind: str) -> tuple:
        return _file(ready, _name(count, len(data)), data), 0
    return plant


def _special(make):
    """What is not a regular file, under a batch's name that counts two records."""
    def plant(ready: str, kind: str) -> tuple:
        path = os.path.join(ready, _name(2))
        make(path)
        return path, 0
    return plant


def _directory(path: str) -> None:
    os.mkdir(path)
    with open(os.path.join(path, "inside"), "wb") as f:
        f.write(_record("directory", 9))


def _bad_name(ready: str, kind: str) -> tuple:
    return _file(ready, "not-a-batch.chq", _record(kind, 9)), 0


def _huge_count(ready: str, kind: str) -> tuple:
    data = _record(kind, 8) + _record(kind, 9)
    ms = int(time.time() * 1000)
    return _file(ready, f"{ms:013d}-{ms:013d}-999-000-999999999-{len(data):08d}-{os.urandom(8).hex()}.chq",
                 data), 0


def _unreadable(ready: str, kind: str) -> tuple:
    data = _record(kind, 8) + _record(kind, 9)
    path = _file(ready, _name(2, len(data)), data)
    os.chmod(path, 0)
    return path, 0


def _file(ready: str, name: str, data: bytes) -> str:
    path = os.path.join(ready, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


#: kind: plant(ready, kind) -> (path planted, good records planted with it)
KINDS = {
    "garbage": _between(b"\x00\xff\xfe garbage \x80\x81\n"),
    "torn last line": _torn,
    "crc flip": _crc_flip,
    "directory": _special(_directory),
    "fifo": _special(os.mkfifo),
    "line of 20 MB": _between(b"7" * (20 << 20) + b"\n"),
    "nested json, valid crc": _between(_crc_line(b"[" * 100000)),
    "null record": _between(_crc_line(b"null")),
    "no payload": _between(_crc_line(b'{"v": 1, "kind": "usage"}')),
    "bad name": _bad_name,
    "symlink to /dev/zero": _special(lambda path: os.symlink("/dev/zero", path)),
    "empty file": _content(b"", 2),
    "only newlines": _content(b"\n\n\n", 3),
    "huge count and attempt": _huge_count,
    "unreadable (mode 000)": _unreadable,
}


def _meaningful(kind: str) -> bool:
    """Root reads a file of mode 000."""
    return not (kind.startswith("unreadable") and hasattr(os, "geteuid") and os.geteuid() == 0)


# -- one kind ----------------------------------------------------------------------------------
def one(collector: c.FaultyCollector, kind: str) -> dict:
    from callhome.queue import DiskQueue

    data_dir = tempfile.mkdtemp(prefix="callhome-bench-files-")
    try:
        queue = DiskQueue(os.path.join(data_dir, PRODUCT)).open()
        path, good = KINDS[kind](os.path.join(queue.dir, "ready"), _slug(kind))
        try:
            result, printed = _host(collector.url, data_dir, _slug(kind))
        finally:
            _unblock(queue.dir)  # a sender stuck opening a FIFO: let it go
        left = [n for sub in ("ready", "inflight") for n in _listing(queue.dir, sub) if _mark(path) in n]
        delivered = sum(collector.events(f"{who}_{_slug(kind)}") for who in ("planted", "host"))
    finally:
        _remove_tree(data_dir)  # the product's sender exits once its directory is gone
    return {"kind": kind, "quarantined_or_skipped": not left, "flush_true": result.get("flushed", False),
            "good_delivered": f"{delivered}/{good + HOST_EVENTS}", "printed": printed,
            "seconds": round(result.get("seconds", HOST_TIMEOUT), 2),
            "counted": result.get("dropped", {}).get("corrupt", 0)}


def _host(url: str, data_dir: str, kind: str) -> tuple:
    """(the host's JSON line, or {} if it hung or failed; whether it printed anything else)."""
    cmd = [sys.executable, "-c", HOST.format(key=c.API_KEY, events=HOST_EVENTS), PRODUCT, kind, url, data_dir]
    try:
        done = subprocess.run(cmd, env=c.child_env(), capture_output=True, text=True, timeout=HOST_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return {}, bool(exc.stdout or exc.stderr)
    lines = done.stdout.splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {}, True
    return result, bool(done.stderr or lines[:-1])


def _mark(path: str) -> str:
    """What stays in the names of a planted batch as it moves (its batch id), or its name."""
    name = os.path.basename(path)
    found = re.search(r"-([0-9a-f]{16})\.chq$", name)
    return found.group(1) if found else name


def _slug(kind: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in kind)


def _listing(queue_dir: str, sub: str) -> list:
    try:
        return os.listdir(os.path.join(queue_dir, sub))
    except OSError:
        return []


def _remove_tree(path: str) -> None:
    """Remove ``path``, again while a sender still writes its status there (at most 5 s)."""
    for _ in range(50):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.1)


def _unblock(queue_dir: str) -> None:
    for sub in ("ready", "inflight"):
        for name in _listing(queue_dir, sub):
            try:
                os.close(os.open(os.path.join(queue_dir, sub, name), os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def run() -> list[dict]:
    """One row per kind (the unreadable file only when not running as root)."""
    with c.FaultyCollector() as collector:
        return [one(collector, kind) for kind in KINDS if _meaningful(kind)]


def main() -> None:
    rows = run()
    keys = list(rows[0])
    widths = [max(len(key), *(len(str(row[key])) for row in rows)) for key in keys]
    print("  ".join(key.ljust(w) for key, w in zip(keys, widths)))
    for row in rows:
        print("  ".join(str(row[key]).ljust(w) for key, w in zip(keys, widths)))
    if not all(_meaningful(kind) for kind in KINDS):
        print("(running as root: the unreadable file is skipped, root reads it)")


if __name__ == "__main__":
    main()
