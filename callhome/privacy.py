"""Helpers a host uses to keep personal data out of what it passes to ``track(meta=...)``.

- :func:`redact_path`: the home directory becomes ``~`` and the working directory ``$CWD``.
- :func:`mask_args`: keep the sub-commands and option names the host declares, mask every value.
- :func:`salted_hash`: a SHA-256 that cannot be reversed by guessing, because its salt is random
  per installation and never leaves the machine.

None of them raises on odd input (see ``docs/privacy.md``). Only the standard library is imported
at module level, so exporting these from ``callhome`` costs nothing at import time.
"""

from __future__ import annotations

import os
import re
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see the module's docstring)
if TYPE_CHECKING:
    from .config import Config

__all__ = ["MASK", "SALT_FILE", "mask_args", "redact_path", "salted_hash"]

MASK = "*****"
SALT_FILE = "salt"
_SALT_BYTES = 32
_EXPLAIN = b"# callhome salt for salted_hash(): random, stored only here and never sent.\n"


# -- paths -----------------------------------------------------------------------------------------
def redact_path(path: object) -> str:
    """``path`` (a ``str``, ``bytes`` or ``os.PathLike``) with the home directory shown as ``~``
    and the current working directory as ``$CWD``, wherever they occur as a whole path prefix.

    The longest matching directory wins, so a working directory inside the home directory is
    ``$CWD``, not ``~/...``. Never raises: a value that is not a path is returned as ``str()``.
    """
    try:
        text = _as_text(path)
        for prefix, replacement in _prefixes():
            text = _replace_prefix(text, prefix, replacement)
        return text
    except Exception:  # a host's __fspath__ or __str__ may fail; redaction must not
        return "<unprintable>"


def _as_text(path: object) -> str:
    if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
        value = os.fspath(path)
        return os.fsdecode(value) if isinstance(value, bytes) else value
    return str(path)


def _prefixes() -> list[tuple[str, str]]:
    """(directory, replacement) pairs, longest first; ``$CWD`` first when both are the same."""
    found = []
    for name, replacement in (("cwd", "$CWD"), ("home", "~")):
        for directory in _directories(name):
            directory = directory.rstrip("/\\")
            if len(directory) > 1 and not re.fullmatch(r"[A-Za-z]:", directory):  # never "/" or "C:"
                found.append((directory, replacement))
    return sorted(found, key=lambda pair: -len(pair[0]))


def _directories(name: str) -> set[str]:
    """The directory as given and resolved (a symlinked home must match both spellings)."""
    try:
        raw = os.getcwd() if name == "cwd" else os.path.expanduser("~")
    except OSError:  # the working directory was deleted
        return set()
    if name == "home" and raw == "~":
        return set()
    return {raw, os.path.realpath(raw)}


def _replace_prefix(text: str, prefix: str, replacement: str) -> str:
    # a whole directory only: not preceded by a path character, followed by a separator or the end
    pattern = r"(?<![\w.\-/\\])" + re.escape(prefix) + r"(?=[/\\]|$|[^\w.\-])"
    flags = re.IGNORECASE if os.name == "nt" else 0
    return re.sub(pattern, lambda _: replacement, text, flags=flags)


# -- command lines ---------------------------------------------------------------------------------
def mask_args(argv: object, known_options: object = ()) -> list[str]:
    """``argv`` (without the program name) with every value replaced by ``*****``.

    ``known_options`` lists what may be shown: sub-command words (``"build"``), flag options
    (``"--verbose"``, ``"-v"``) and options that take a value, written with a trailing ``=``
    (``"--output="``, ``"-o="``); a ``{name: takes_value}`` mapping works too. Then:

    - a known sub-command word is kept; any other positional argument becomes ``*****``;
    - a known option is kept and its value masked: ``--output x`` → ``--output *****``,
      ``--output=x`` → ``--output=*****``, ``-ox`` → ``-o*****``;
    - an option that is not known becomes ``--*****`` (with any ``=value`` it carried);
    - everything after ``--`` is a value.

    Never raises; non-string items are converted with ``str()`` first; at most ``MAX_ARGS``
    (1,000) arguments and known options are looked at.
    """
    try:
        takes_value = _known(known_options)
        return _mask(_as_list(argv), takes_value)
    except Exception:  # a hostile iterable: showing nothing is the safe answer
        return []


#: The most arguments (and known options) looked at: a command line has tens; an endless
#: iterable passed by mistake must not hang the host.
MAX_ARGS = 1000


def _as_list(argv: object) -> list[str]:
    import itertools

    if isinstance(argv, (str, bytes)):
        argv = [argv]
    return [_as_text(item) for item in itertools.islice(argv, MAX_ARGS)]  # type: ignore[call-overload]


def _known(known_options: object) -> dict[str, bool]:
    """``{word or option name: takes a value}`` from a list with ``=`` suffixes or a mapping."""
    import itertools

    if isinstance(known_options, dict):
        return {str(k).rstrip("="): bool(v) or str(k).endswith("=")
                for k, v in itertools.islice(known_options.items(), MAX_ARGS)}
    if isinstance(known_options, str):
        known_options = [known_options]
    # not an iterable: the TypeError is mask_args's to catch
    return {str(k).rstrip("="): str(k).endswith("=")
            for k in itertools.islice(known_options or (), MAX_ARGS)}  # type: ignore[call-overload]


def _mask(argv: list[str], takes_value: dict[str, bool]) -> list[str]:
    masked: list[str] = []
    pending_value = only_values = False
    for arg in argv:
        if pending_value or only_values:
            masked.append(MASK)
            pending_value = False
        elif arg == "--":
            masked.append(arg)
            only_values = True
        elif _is_option(arg):
            shown, pending_value = _mask_option(arg, takes_value)
            masked.append(shown)
        else:
            masked.append(arg if arg in takes_value and not takes_value[arg] else MASK)
    return masked


def _is_option(arg: str) -> bool:
    """``-x``/``--name``, but not ``-`` (stdin) or a negative number (a value)."""
    return arg.startswith("-") and arg != "-" and not re.fullmatch(r"-\d[\d.eE+-]*", arg)


def _mask_option(arg: str, takes_value: dict[str, bool]) -> tuple[str, bool]:
    """(what to show, whether the next argument is this option's value)."""
    name, equals, _ = arg.partition("=")
    if name in takes_value:
        return (name + "=" + MASK, False) if equals else (name, takes_value[name])
    if not arg.startswith("--") and len(name) > 2:
        return _mask_short_cluster(arg, takes_value)
    return "--" + MASK, False


def _mask_short_cluster(arg: str, takes_value: dict[str, bool]) -> tuple[str, bool]:
    """``-ovalue`` (a known ``-o=``) or ``-abc`` (known flags ``-a``, ``-b``, ``-c``)."""
    head = arg[:2]
    if takes_value.get(head):
        return head + MASK, False
    if all(takes_value.get("-" + flag) is False for flag in arg[1:]):
        return arg, False
    return "--" + MASK, False


# -- hashing ---------------------------------------------------------------------------------------
#: Salts already found, by the arguments that found them: the disk is read once per process.
_salts: dict[object, bytes] = {}


def salted_hash(value: object, salt_dir: str | None = None, *, product_id: str | None = None,
                data_dir: str | None = None) -> str:
    """SHA-256 hex of (salt + ``value``), the salt being random per installation and never sent.

    The same value hashes the same on this installation and differently on any other, so the
    receiver can count distinct values without learning them.

    The salt lives in ``<salt_dir>/salt``; without ``salt_dir``, in the product's state directory
    (``product_id``/``data_dir``, by default those given to ``callhome.init()``). It is created on
    first use (random 32 bytes, mode 0600, atomically). When there is no product, when telemetry
    is off for it (nothing may be written then), in CI, or when the disk refuses the file, the salt
    is kept in memory for this process only: hashes are then stable within the process alone.
    So is it for a ``salt_dir``, ``product_id`` or ``data_dir`` that is not a usable path or name.
    Never raises.
    """
    import hashlib

    try:
        salt = _salt(salt_dir, product_id, data_dir)
    except Exception:  # arguments that are not paths or names (a number, a list, a NUL, a lone surrogate)
        salt = _process_salt()
    return hashlib.sha256(salt + _as_bytes(value)).hexdigest()


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return _as_text(value).encode("utf-8", "surrogatepass")
    except Exception:  # the host's own __str__ failing: hash its type rather than raise
        return f"<{type(value).__name__}>".encode()


def _salt(salt_dir: str | None, product_id: str | None, data_dir: str | None) -> bytes:
    """The salt for these arguments, looked up once per process (later calls touch no disk)."""
    default = None if salt_dir or product_id else _default_config()  # a new init() is a new key
    key = (salt_dir, product_id, data_dir, default)
    if key not in _salts:
        _salts[key] = _find_salt(salt_dir, product_id, data_dir)
    return _salts[key]


def _find_salt(salt_dir: str | None, product_id: str | None, data_dir: str | None) -> bytes:
    try:
        directory = salt_dir or _product_directory(product_id, data_dir)
    except Exception:  # no home directory, an odd product id: fall back to memory
        directory = None
    return (_load_or_create_salt(directory) if directory else None) or _process_salt()


def _process_salt() -> bytes:
    if "process" not in _salts:
        _salts["process"] = os.urandom(_SALT_BYTES)
    return _salts["process"]


def _product_directory(product_id: str | None, data_dir: str | None) -> str | None:
    """The product's state directory when telemetry may write there, else None."""
    from . import choices
    from ._fs import product_dir
    from .config import resolve
    from .optout import decide

    config = _default_config() if product_id is None else None
    if config is None:
        if product_id is None:
            return None
        config = resolve({"product_id": product_id, "data_dir": data_dir})
    directory = product_dir(config.product_id, data_dir or config.data_dir)
    decision = decide(config, choices=choices.load(directory))
    return directory if decision.enabled and not decision.is_ci else None


def _default_config() -> Config | None:
    """The configuration given to ``callhome.init()``, looked up without importing the package
    (it imports this module), or None before ``init()``."""
    agent = getattr(sys.modules.get("callhome"), "_default", None)
    config: Config | None = getattr(agent, "config", None)
    return config


def _load_or_create_salt(directory: str) -> bytes | None:
    """The salt in ``directory``; the first process to publish one (by ``link``) wins."""
    from ._fs import ensure_private_dir, publish_once

    path = os.path.join(directory, SALT_FILE)
    existing = _read_salt(path)
    if existing:
        return existing
    try:
        ensure_private_dir(directory)
        publish_once(path, os.urandom(_SALT_BYTES).hex().encode() + b"\n" + _EXPLAIN)
    except OSError:
        pass
    return _read_salt(path)


def _read_salt(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return bytes.fromhex(f.readline().strip().decode("ascii")) or None
    except (OSError, ValueError):
        return None
