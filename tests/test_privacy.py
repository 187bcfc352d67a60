"""The privacy helpers: redact_path, mask_args and salted_hash, table-driven."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat
import threading

import pytest

import callhome
from callhome import privacy
from callhome.privacy import MASK, mask_args, redact_path, salted_hash

from conftest import PRODUCT, run_host


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """HOME is ``<tmp>/home`` and the working directory ``<tmp>/home/project`` (inside it)."""
    home = tmp_path / "home"
    cwd = home / "project"
    cwd.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return {"home": str(home), "cwd": str(cwd), "tmp": str(tmp_path)}


@pytest.mark.parametrize("given, expected", [
    ("{home}", "~"),
    ("{home}/notes.txt", "~/notes.txt"),
    ("{home}/.config/acme", "~/.config/acme"),
    ("{cwd}", "$CWD"),  # the longest match wins: not ~/project
    ("{cwd}/src/main.py", "$CWD/src/main.py"),
    ("{home}/projectile/x", "~/projectile/x"),  # a sibling that shares the prefix is not the cwd
    ("{tmp}/homework/x", "{tmp}/homework/x"),  # nor the home
    ("/usr/lib/python3", "/usr/lib/python3"),
    ("/srv{home}/x", "/srv{home}/x"),  # only a whole path prefix, not one in the middle
    ("error in {cwd}/a.py line 3", "error in $CWD/a.py line 3"),
    ("'{home}/a' -> '{cwd}/b'", "'~/a' -> '$CWD/b'"),
    ("relative/path", "relative/path"),
    ("", ""),
])
def test_redact_path(dirs, given, expected):
    assert redact_path(given.format(**dirs)) == expected.format(**dirs)


class _BadPath:
    def __fspath__(self):
        raise RuntimeError("no path for you")


@pytest.mark.parametrize("given, expected", [
    (lambda d: pathlib.Path(d["cwd"]) / "out", "$CWD/out"),
    (lambda d: os.fsencode(d["home"] + "/a"), "~/a"),
    (lambda d: None, "None"),
    (lambda d: 42, "42"),
    (lambda d: _BadPath(), "<unprintable>"),
])
def test_redact_path_takes_any_path_like_and_never_raises(dirs, given, expected):
    assert redact_path(given(dirs)) == expected


def test_redact_path_matches_a_symlinked_home(tmp_path, monkeypatch):
    real = tmp_path / "real-home"
    real.mkdir()
    (tmp_path / "link-home").symlink_to(real)
    monkeypatch.setenv("HOME", str(tmp_path / "link-home"))
    monkeypatch.chdir(tmp_path)
    assert redact_path(str(real / "x")) == "~/x"
    assert redact_path(str(tmp_path / "link-home" / "x")) == "~/x"


KNOWN = ["build", "deploy", "--verbose", "-v", "-q", "--output=", "-o=", "--region="]


@pytest.mark.parametrize("argv, expected", [
    ([], []),
    (["build"], ["build"]),
    (["build", "src/app.py"], ["build", MASK]),
    (["build", "--verbose", "-v"], ["build", "--verbose", "-v"]),
    (["build", "--output", "/home/me/out"], ["build", "--output", MASK]),
    (["build", "--output=/home/me/out"], ["build", "--output=" + MASK]),
    (["build", "-o", "out"], ["build", "-o", MASK]),
    (["build", "-oout"], ["build", "-o" + MASK]),
    (["build", "-o=out"], ["build", "-o=" + MASK]),
    (["build", "-vq"], ["build", "-vq"]),  # a cluster of known flags
    (["build", "-vx"], ["build", "--" + MASK]),  # with an unknown one
    (["deploy", "--token", "s3cr3t"], ["deploy", "--" + MASK, MASK]),
    (["deploy", "--token=s3cr3t"], ["deploy", "--" + MASK]),
    (["deploy", "-t", "s3cr3t"], ["deploy", "--" + MASK, MASK]),
    (["deploy", "--verbose=yes"], ["deploy", "--verbose=" + MASK]),
    (["--region", "build"], ["--region", MASK]),  # a value, even when it looks like a sub-command
    (["--output", "--verbose"], ["--output", MASK]),  # the option's value, whatever it looks like
    (["build", "--", "--verbose", "deploy"], ["build", "--", MASK, MASK]),
    (["build", "-", "-5", "-1.5e3"], ["build", MASK, MASK, MASK]),  # stdin and negative numbers are values
    (["me@example.com"], [MASK]),
    ([pathlib.Path("/etc/passwd"), 7], [MASK, MASK]),
])
def test_mask_args(argv, expected):
    assert mask_args(argv, KNOWN) == expected


@pytest.mark.parametrize("known", [
    {"build": False, "--output": True, "--verbose": False},
    ("build", "--output=", "--verbose"),
    iter(["build", "--output=", "--verbose"]),
])
def test_mask_args_accepts_a_mapping_or_any_iterable(known):
    assert mask_args(["build", "--output", "x", "--verbose", "y"], known) == ["build", "--output", MASK,
                                                                               "--verbose", MASK]


@pytest.mark.parametrize("argv, known, expected", [
    (["build", "x"], None, [MASK, MASK]),
    ("build", ["build"], ["build"]),  # one string is one argument, not its characters
    (None, ["build"], []),
    (iter([1, None]), (), [MASK, MASK]),
])
def test_mask_args_never_raises(argv, known, expected):
    assert mask_args(argv, known) == expected


@pytest.fixture(autouse=True)
def fresh_salts(monkeypatch):
    """No salt cached by an earlier test, and no default agent left by one (test_public_api)."""
    monkeypatch.setattr(privacy, "_salts", {})
    monkeypatch.setattr(callhome, "_default", None)


def stored_salt(directory) -> bytes:
    with open(os.path.join(directory, "salt"), "rb") as f:
        return bytes.fromhex(f.readline().decode().strip())


def test_salted_hash_is_sha256_of_a_stored_salt_and_the_value(tmp_path):
    first = salted_hash("acme-project", str(tmp_path / "a"))
    salt = stored_salt(tmp_path / "a")
    assert len(salt) == 32
    assert first == hashlib.sha256(salt + b"acme-project").hexdigest()
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "salt").st_mode) == 0o600
    assert "never sent" in (tmp_path / "a" / "salt").read_text()  # the file explains itself


@pytest.mark.parametrize("other_value, other_dir, same", [
    ("acme-project", "a", True),
    ("acme-project2", "a", False),
    ("acme-project", "b", False),  # another installation
])
def test_salted_hash_is_stable_per_installation_only(tmp_path, other_value, other_dir, same):
    first = salted_hash("acme-project", str(tmp_path / "a"))
    privacy._salts.clear()  # another process: read from disk again
    assert (salted_hash(other_value, str(tmp_path / other_dir)) == first) is same


def test_concurrent_first_calls_agree_on_one_salt(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(privacy._load_or_create_salt(str(tmp_path))))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and results[0] == stored_salt(tmp_path)
    assert os.listdir(tmp_path) == ["salt"]  # no temporary file left behind


def test_salted_hash_uses_the_product_directory(state_dir):
    digest = salted_hash("x", product_id=PRODUCT, data_dir=state_dir)
    assert digest == hashlib.sha256(stored_salt(os.path.join(state_dir, PRODUCT)) + b"x").hexdigest()


@pytest.mark.parametrize("env", [{"DO_NOT_TRACK": "1"}, {"CI": "true"},
                                 {"TEST_PRODUCT_TELEMETRY_DISABLED": "yes"}])
def test_salted_hash_writes_nothing_when_telemetry_is_off(state_dir, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    first = salted_hash("x", product_id=PRODUCT, data_dir=state_dir)
    assert salted_hash("x", product_id=PRODUCT, data_dir=state_dir) == first  # stable in this process
    assert not os.path.exists(state_dir)


def test_salted_hash_without_a_product_keeps_the_salt_in_memory(tmp_path):
    assert salted_hash("x") == salted_hash("x") != salted_hash("y")
    assert not os.path.exists(tmp_path / "state")


class _BadStr:
    def __str__(self):
        raise RuntimeError("no text for you")


@pytest.mark.parametrize("value", [None, 3, b"bytes", "\udcff lone surrogate", "ünïcødé", _BadStr()])
def test_salted_hash_never_raises(tmp_path, value):
    assert len(salted_hash(value, str(tmp_path))) == 64


_NOT_PATHS = [123, 1.5, True, float("nan"), b"/bytes/path", ["a"], {"a": 1}, {1}, object(), _BadStr(), "\ud800",
              "a\x00b", "x" * 100000, "/proc/self/mem", "\n", ""]


@pytest.mark.parametrize("where", ["salt_dir", "product_id", "data_dir"])
def test_salted_hash_never_raises_on_arguments_that_are_not_paths_or_names(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)  # "\n" is a relative path: its salt goes there
    for bad in _NOT_PATHS:
        digest = salted_hash("value", **{where: bad})
        assert len(digest) == 64 and digest == salted_hash("value", **{where: bad}), bad


def test_salted_hash_defaults_to_the_product_given_to_init(state_dir):
    done = run_host(f"""
        import json, callhome
        from callhome.privacy import salted_hash
        before = salted_hash("x")
        callhome.init(product_id={PRODUCT!r}, data_dir={state_dir!r}, call_home_interval=0)
        print(json.dumps([before, salted_hash("x"), salted_hash("x")]))
    """)
    assert done.returncode == 0, done.stderr
    before, after, again = json.loads(done.stdout)
    assert after == again != before
    assert after == hashlib.sha256(stored_salt(os.path.join(state_dir, PRODUCT)) + b"x").hexdigest()
