"""SHA-1 and SHA-256 from CPython's built-in modules where they exist.

``hashlib`` loads OpenSSL: about 6 ms that a short-lived host would wait for at exit (a session's
id) or at start (the worker's first steps). The built-in modules give the same digests.
"""

from __future__ import annotations

__all__ = ["sha1", "sha256"]

try:
    from _sha1 import sha1  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # another Python implementation
    from hashlib import sha1

try:
    from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython <= 3.11
except ImportError:
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython 3.12+
    except ImportError:
        from hashlib import sha256
