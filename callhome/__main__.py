"""``python -m callhome``: the same command as ``callhome``; ``_sender`` is the detached sender."""

import sys

if sys.argv[1:2] == ["_sender"]:
    from .sender.process import main
else:
    from .cli import main

sys.exit(main())
