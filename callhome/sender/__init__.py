"""Delivery: the product's one sender (a detached process, or a thread of the host), its
delivery cycle, and the transport. Imported lazily, by the worker, the CLI and the relay only."""
