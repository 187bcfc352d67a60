"""Run one command; print ``wall_seconds max_rss exit_code cpu_seconds`` (for ``cli_startup.py``).

Started as ``python -S _launch.py CMD...``: a small process that forks the command itself, so the
command's ``ru_maxrss`` is its own. (A child spawned straight from the benchmark's process would
report at least the benchmark's own RSS: Linux carries the peak RSS of the address space it
replaces across ``exec``, and ``subprocess`` forks with ``vfork``.)
"""
import os
import sys
import time

cmd = sys.argv[1:]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
print(wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime)
