"""A host whose disk is full while a marker file exists, for ``_faults_disk.py``.

    python bench/_disk_host.py URL DATA_DIR MARKER EVENTS FREE

Every ``os.write`` under the queue fails with ENOSPC while MARKER exists. The host tracks EVENTS
events; with FREE=1 it then removes MARKER and waits (at most 10 s) for ``status()["disk"]`` to
be ``ok`` again. It shuts down and prints one JSON line: ``status()`` when the disk was full, and
at the end, and whether anything reached its stdout or stderr before that.
"""

import errno
import io
import json
import os
import sys
import time

url, data_dir, marker, events, free = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
_real_write = os.write


def _write(fd: int, data: bytes) -> int:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if "/queue-v1/" in target and os.path.exists(marker):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real_write(fd, data)


os.write = _write
out, err = sys.stdout, sys.stderr
sys.stdout, sys.stderr = io.StringIO(), io.StringIO()  # whatever callhome would print

import callhome  # noqa: E402

callhome.init(product_id="bench-disk", api_key="bench-key", endpoint=url, domain="example.com",
              data_dir=data_dir, call_home_interval=0, send_in_ci=True)
for i in range(events):
    callhome.track("disk", meta={"seq": i})
deadline = time.monotonic() + 5
while not callhome.status()["disk"].startswith("memory-only") and time.monotonic() < deadline:
    time.sleep(0.05)
full = callhome.status()
if free:
    os.unlink(marker)
    deadline = time.monotonic() + 10
    while callhome.status()["disk"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
callhome.shutdown(0.5)
end = callhome.status()
printed = bool(sys.stdout.getvalue() or sys.stderr.getvalue())
sys.stdout, sys.stderr = out, err
keys = ("disk", "delivered", "queued", "dropped")
print(json.dumps({"full": {k: full[k] for k in keys}, "end": {k: end[k] for k in keys}, "printed": printed}))
