"""Everything the worker thread does: disk, file locks, starting the sender. Never the network.

Imported lazily, on the worker's thread, which imports all of it before the host may fork (see
``Agent._before_fork``); importing a module here must not load the Worker.
"""
