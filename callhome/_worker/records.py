"""What the host buffered → framed queue lines, on the worker's thread.

In the default mode ``track()`` hands over the raw call (``buffer.RAW_FIELDS`` fields) and nothing more;
here it is cleaned, validated and encoded, so the host pays for none of it. The fields every
record of this agent shares are encoded once per configuration and installation id; each call
then costs one small encode of its own fields. A call that cannot be sent is dropped and
counted, and ``status()["problems"]`` names its activity and why. Records the host side built
itself (sessions, exceptions, the CALL_HOME; every record in debug and strict modes) arrive as
dicts and are encoded whole.
"""

from __future__ import annotations

import json
import re

from .._state import HostState
from ..config import Config
from ..payload import (
    MAX_KEY,
    MAX_META_BYTES,
    MAX_META_KEYS,
    Rejected,
    call_label,
    clean_activity,
    clean_category,
    clean_meta,
    clean_user,
    coerce_event_at,
)
from ..queue import frame, frame_json
from ..schema import MAX_META_KEYS as SCHEMA_META_KEYS
from ..schema import MAX_STRING, FieldError, validate

__all__ = ["Records"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any, Callable, Union

    #: What the buffer holds: a raw ``track()`` call (``buffer.RAW_FIELDS`` fields) or a record the host side built
    Item = Union[tuple[Any, ...], dict[str, Any]]


#: Activity names whose encoded start is remembered (a product has tens; a bound all the same).
MAX_NAMES = 1024

_quote = json.encoder.encode_basestring_ascii

#: The one rule a record may break when it is queued: records wait for an ``ip_addr`` or
#: ``domain`` (held), which the sender fills in from the configuration at send time.
_IDENTITY_LATER = "either ip_addr or domain is required"
#: Meta keys and values ``clean_meta`` keeps as they are (subclasses and ``None`` go through it).
_PLAIN_KEYS = frozenset((str,))
_PLAIN_VALUES = frozenset((str, int, float, bool))
#: What, in the encoding of a plain meta, ``clean_meta`` would change or might: an escape (a
#: control character, a line break, a quote, non-ASCII), a non-finite float, an integer of 16
#: digits or more (beyond 2**53 it becomes a string), space at either end of a string or key,
#: an empty key. A false alarm (a string that reads "NaN") only costs the slower path.
_SUSPECT = re.compile(r'\\|NaN|Infinity|:-?\d{16}|" | "|"":').search


def _flat_encoder() -> Callable[[dict[str, Any]], str]:
    """Encode a flat, clean dict (what ``clean_meta`` returns): the C encoder called directly
    skips ``JSONEncoder.encode``'s Python layers, a third of the cost for a small dict."""
    make = getattr(json.encoder, "c_make_encoder", None)
    encoder = json.JSONEncoder(separators=(",", ":"))
    if make is None:  # another Python implementation
        return encoder.encode
    chunks = make(None, encoder.default, _quote, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


def _valid_unicode(payload: dict[str, Any]) -> bool:
    """Whether every string can be sent as UTF-8, as a receiver's JSON parser insists."""
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return False
    return True


class Records:
    """Turns buffered items into queue lines for one agent's state."""

    def __init__(self, state: HostState, client_properties: Callable[[], dict[str, Any]]) -> None:
        self.state = state
        self.client_properties = client_properties
        self._encode = _flat_encoder()
        #: (config, installation id) what follows is encoded for
        self._shared: tuple[Config | None, str | None] = (None, None)
        self._start = ""  # the payload up to its activity_type
        self._heads: dict[object, str] = {}  # activity as given → the payload up to its event_id
        self._tail_meta: dict[str, Any] = {}  # the meta keys the agent adds
        self._tail = "{}"  # the same, encoded: the meta of a call without meta
        self._tail_rest = "}"  # what follows the host's own keys, encoded as they are

    def lines(self, items: list[Item], installation_id: str | None) -> list[bytes]:
        """The framed lines of ``items`` that can be sent (the others are counted)."""
        config = self.state.config
        if config is None:  # the worker runs only once init() gave one
            return []
        if self._shared[0] is not config or self._shared[1] != installation_id:
            self._share(config, installation_id)
        limit = config.max_event_bytes
        lines = []
        for item in items:
            if type(item) is tuple:
                try:
                    line = self._raw(item)
                except Exception as exc:  # the host's objects fought back (a __str__ or timestamp() raising)
                    self._refuse(item[1], f"{type(exc).__name__} while reading its arguments")
                    continue
            else:  # a built record (mypy narrows `type(item) is tuple` in its own branch only)
                line = self._built(item, installation_id)  # type: ignore[arg-type]
            if line is None:
                continue
            if len(line) > limit:
                self.state.counters.add("dropped.oversize")
                continue
            lines.append(line)
        return lines

    def _built(self, record: dict[str, Any], installation_id: str | None) -> bytes | None:
        """A record the host side built, with the client properties it carries, checked by the
        schema the collector applies (a record it would refuse is dropped here, and named)."""
        payload = record["payload"]
        meta = payload.setdefault("meta", {})
        if installation_id:
            meta["installation_id"] = installation_id
        if record.pop("props", False):
            self._add_properties(payload, meta)
        errors = [error for error in validate(payload, "aggregate" if record.get("kind") == "aggregate" else "usage")
                  if error.message != _IDENTITY_LATER]
        if not errors and not _valid_unicode(payload):
            errors = [FieldError("payload", "holds a string that is not valid Unicode (a lone surrogate)")]
        if errors:
            self._refuse(payload.get("activity_type"), f"{errors[0].field} {errors[0].message}")
            return None
        return frame(record)

    def _add_properties(self, payload: dict[str, Any], meta: dict[str, Any]) -> None:
        """The client properties, up to the schema's cap on meta keys. At the cap the record's own
        meta (the host's keys and callhome's) comes first, then the properties in their order:
        detected (OS, Python, ...), the product's fields, then the license and custom properties
        as they were set. What does not fit is left out and named in ``problems``."""
        left_out = []
        for key, value in self.client_properties().items():
            if key in meta:
                continue
            if len(meta) >= SCHEMA_META_KEYS:
                left_out.append(key)
                continue
            meta[key] = value
        if left_out:
            self.state.counters.add("coerced")
            self.state.problems.append(
                f"{payload.get('activity_type')} meta is capped at {SCHEMA_META_KEYS} keys: "
                f"{', '.join(left_out[:8])}{' ...' if len(left_out) > 8 else ''} left out")

    def _raw(self, raw: tuple[Any, ...]) -> bytes | None:
        _, activity, user_id, user_id_type, meta, event_at, category, now, event_id = raw
        problems: list[str] = []
        head = self._heads.get(activity) if type(activity) is str else None
        if head is None:
            head = self._head_for(activity)
            if head is None:
                return None
        encoded_meta = self._tail
        if meta or category is not None:
            encoded_meta = (category is None and self._as_is(meta)) or self._cleaned(meta, category, problems)
        at = int(now) if event_at is None else coerce_event_at(event_at, now, problems)
        who = ""
        if user_id is not None or user_id_type is not None:
            user = clean_user(user_id, user_id_type, problems)
            if user:
                who = f',"user_id":{_quote(user[0])},"user_id_type":"{user[1]}"'
        if problems:
            self._note(activity, problems)
        return frame_json(f'{head}{event_id}","event_at":{at}{who},"meta":{encoded_meta}}}}}'.encode())

    def _as_is(self, meta: dict[Any, Any]) -> str | None:
        """``meta`` and the agent's keys encoded without a copy, when cleaning could not change
        ``meta`` (the common case, checked in C but for one ``re`` search); else None."""
        if len(meta) > MAX_META_KEYS or not _PLAIN_VALUES.issuperset(map(type, meta.values())) \
                or not _PLAIN_KEYS.issuperset(map(type, meta)) or max(map(len, meta)) > MAX_KEY \
                or not self._tail_meta.keys().isdisjoint(meta):
            return None
        try:
            text = self._encode(meta)
        except ValueError:  # an int too long to convert (Python's int_max_str_digits)
            return None
        # the encoding's length bounds each string, and (with 10 a key for a number's flat 8)
        # the size clean_meta estimates
        if len(text) > MAX_STRING or len(text) + 10 * len(meta) > MAX_META_BYTES or _SUSPECT(text):
            return None
        return text[:-1] + self._tail_rest

    def _cleaned(self, meta: dict[Any, Any] | None, category: object, problems: list[str]) -> str:
        extra = clean_meta(meta, problems) if meta else {}
        if category is not None:
            category = clean_category(category, problems)
            if category:
                extra["category"] = category
        extra.update(self._tail_meta)
        return self._encode(extra)

    def _head_for(self, activity: object) -> str | None:
        """The record's start up to its ``event_id`` for an activity name not seen yet (or None:
        the name is unusable, and the call is dropped)."""
        problems: list[str] = []
        try:
            name = clean_activity(activity, problems)
        except Rejected as exc:
            self._refuse(activity, str(exc))
            return None
        if problems:  # said once per name: the cleaned name is remembered
            self._note(activity, problems)
        head = f'{self._start}{_quote(name)},"event_id":"'
        if len(self._heads) >= MAX_NAMES:
            self._heads.clear()
        self._heads[activity] = head
        return head

    def _share(self, config: Config, installation_id: str | None) -> None:
        """Encode what every record of this configuration shares: the payload's constant fields
        up to ``activity_type``, and the meta keys the agent adds (they win over the host's)."""
        state = self.state
        fields = dict(state.static)
        if config.domain:
            fields["domain"] = config.domain
        if config.ip_addr:
            fields["ip_addr"] = config.ip_addr
        shared = self._encode(fields)[1:-1]
        self._start = '{"v":1,"kind":"usage","payload":{' + (shared + "," if shared else "") + '"activity_type":'
        self._heads.clear()
        self._tail_meta = dict(state.base_meta)
        if installation_id:
            self._tail_meta["installation_id"] = installation_id
        self._tail = self._encode(self._tail_meta)
        self._tail_rest = "," + self._tail[1:] if self._tail_meta else "}"
        self._shared = (config, installation_id)

    def _refuse(self, activity: object, why: str) -> None:
        self.state.counters.add("dropped.invalid")
        self.state.problems.append(f"{call_label(activity)} dropped: {why}")

    def _note(self, activity: object, problems: list[str]) -> None:
        self.state.counters.add("coerced", len(problems))
        self.state.problems.extend(f"{call_label(activity)}: {problem}" for problem in problems)
