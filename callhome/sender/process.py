"""``python -m callhome _sender``: the detached sender of one product.

Started by a host's worker (``launch.py``) in a new session, with stdio on the null device and no
inherited descriptors. Its settings, the API key among them, arrive on standard input, never in
``argv``, the environment or a file. Exit codes: 0 done (idle, lifetime, or another sender was
alive), 2 an unusable hand-off, 3 the product has no queue, 4 this is not the host's callhome.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from .. import choices
from .._fs import product_dir
from .._version import __version__
from ..config import Config
from ..queue import DiskQueue
from .files import package_dir
from .loop import SenderLoop

__all__ = ["main"]

#: A hand-off is one configuration: far below this.
MAX_HANDOFF = 1 << 20


def main() -> int:
    try:
        handoff = json.loads(sys.stdin.buffer.read(MAX_HANDOFF))
        config = Config.from_dict(handoff["config"])
    except Exception:
        return 2
    finally:
        sys.stdin.close()
    if handoff.get("version") != __version__ or handoff.get("package") != package_dir():
        return 4
    directory = product_dir(config.product_id, config.data_dir)
    queue = DiskQueue(directory, config.fsync)  # never .open(): a removed product stays removed
    if not os.path.isdir(queue.dir):
        return 3
    os.chdir(directory)  # started in the host's directory: do not keep it busy
    loop = SenderLoop(config, queue, choices.Watch(directory), "process")
    if not loop.claim(wait=float(handoff.get("wait") or 0)):
        return 0
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    loop.run()
    return 0
