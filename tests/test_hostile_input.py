"""Every public function, with 40-odd kinds of bad value, before ``init()``, after it and after
``shutdown()``: in the default mode nothing raises, nothing is printed, and what is refused is
counted. Run in a fresh interpreter, whose stdout and stderr are the evidence."""

from __future__ import annotations

import json

from conftest import host_options, run_host

HOST = r'''
import datetime, decimal, fractions, io, json, sys
import callhome

class Hostile:
    def __str__(self): raise RuntimeError("str")
    __repr__ = __str__
    def __hash__(self): raise RuntimeError("hash")
    def __eq__(self, other): raise RuntimeError("eq")
    def __bool__(self): raise RuntimeError("bool")
    def __len__(self): raise RuntimeError("len")
    def __iter__(self): raise RuntimeError("iter")
    def __index__(self): raise RuntimeError("index")
    def __float__(self): raise RuntimeError("float")
    def __fspath__(self): raise RuntimeError("fspath")

class HostileKey:
    def __str__(self): raise RuntimeError("key str")
    __repr__ = __str__

class HostileInt(int):
    def __str__(self): raise RuntimeError("int str")
    __repr__ = __str__

class HostileStr(str):
    def __str__(self): raise RuntimeError("str str")
    def strip(self, *a): raise RuntimeError("strip")

loop_dict = {}; loop_dict["self"] = loop_dict
loop_list = []; loop_list.append(loop_list)
deep = []
for _ in range(100000):
    deep = [deep]

BAD = [None, True, False, 0, -1, 2 ** 64, 10 ** 400, -(10 ** 5000), 1.5, float("nan"), float("inf"), float("-inf"),
       1j, "", " ", "\n\r\t", "\x00", "\ud800", "a" * 10_000_000, "ü" * 1000, b"bytes", bytearray(b"x"),
       memoryview(b"x"), [], [1, "x"], (), {}, {"k": "v"}, {1: 2, None: 3}, loop_dict, loop_list, deep, set(),
       frozenset({1}), object(), type, print, Ellipsis, datetime.datetime.min, datetime.datetime.max,
       datetime.date.max, decimal.Decimal("NaN"), fractions.Fraction(1, 3), range(10 ** 12), Hostile(),
       HostileInt(5), HostileStr("x"), [Hostile()], {"k": Hostile()}, {HostileKey(): 1}]

def calls(value):
    yield "track", (value,), {}
    yield "track", ("ok",), {"user_id": value, "user_id_type": "EMAIL"}
    yield "track", ("ok",), {"user_id": "dev", "user_id_type": value}
    yield "track", ("ok",), {"meta": value}
    yield "track", ("ok",), {"meta": {"key": value}}
    yield "track", ("ok",), {"event_at": value}
    yield "track", ("ok",), {"category": value}
    yield "count", (value,), {}
    yield "count", ("ok", value), {}
    yield "count", ("ok",), {"meta": value}
    yield "call_home", (value,), {}
    yield "set_property", (value, "x"), {}
    yield "set_property", (1, value), {}
    yield "set_license", (value,), {"expired": value, "activated": value, "blocked": value, "allowed": value,
                                    "key": value}
    yield "start_session", (value,), {}
    yield "end_session", (value,), {}
    yield "track_exception", (value,), {}
    yield "flush", (value,), {}
    yield "mask_args", (value, value), {}
    yield "redact_path", (value,), {}
    yield "salted_hash", (value,), {"salt_dir": value if isinstance(value, str) and len(value) < 100 else None}

out, err = sys.stdout, sys.stderr
sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
raised, made = [], 0

def phase(name):
    global made
    for value in BAD:
        for function, args, kwargs in calls(value):
            try:
                getattr(callhome, function)(*args, **kwargs)
                made += 1
            except BaseException as exc:
                raised.append(f"{name}: {function} {type(exc).__name__}")
        try:
            with callhome.session(value):
                pass
            if not isinstance(value, str):  # a string is a product id: init() would switch to it
                callhome.init(value)  # a product id that is no product id: refused, counted
            callhome.status()
            callhome.notice_text()
        except BaseException as exc:
            raised.append(f"{name}: session/init {type(exc).__name__}")

phase("before init")
callhome.init({options})
phase("after init")
callhome.init({options})
flushed = callhome.flush(20)
status = callhome.status()
callhome.shutdown(1)
phase("after shutdown")
printed = sys.stdout.getvalue() + sys.stderr.getvalue()
sys.stdout, sys.stderr = out, err
print(json.dumps({"raised": raised[:20], "made": made, "printed": printed[:500], "flushed": flushed,
                  "dropped": status["dropped"], "coerced": status["coerced"], "problems": len(status["problems"]),
                  "internal_errors": status["internal_errors"], "kinds": len(BAD)}))
'''


def test_no_public_function_raises_or_prints_on_bad_values(collector, state_dir, tmp_path):
    # in a directory of its own: a salt_dir such as " " is a relative path, and gets a salt there
    host = run_host(HOST.replace("{options}", host_options(collector, state_dir)), timeout=240, cwd=str(tmp_path))
    assert host.returncode == 0, host.stderr[-2000:]
    assert host.stderr == "", host.stderr[-2000:]
    report = json.loads(host.stdout)
    assert report["kinds"] >= 40
    assert report["raised"] == [], report["raised"]
    assert report["printed"] == "", report["printed"]
    assert report["made"] >= 3 * 40 * 20
    assert report["internal_errors"] == 0, report
    # what was refused is counted: invalid calls dropped, values coerced, and named in problems
    assert report["dropped"].get("invalid", 0) > 0 and report["coerced"] > 0 and report["problems"] > 0, report
    assert report["flushed"] is True, report
