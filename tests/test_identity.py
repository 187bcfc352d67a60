"""callhome.identity: a random per-product installation id, created once and shared by every process."""

from __future__ import annotations

import getpass
import os
import socket
import stat
import time

import pytest

from callhome import identity

from conftest import is_uuid4, start_host


def test_created_once_as_a_private_uuid4(tmp_path):
    first = identity.load_or_create(str(tmp_path), "acme-cli")
    assert is_uuid4(first)
    path = tmp_path / identity.ID_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert identity.load_or_create(str(tmp_path), "acme-cli") == first
    assert identity.read(str(tmp_path)) == first
    assert [p.name for p in tmp_path.iterdir()] == [identity.ID_FILE]  # no temporary file left


def test_each_directory_gets_its_own_random_id(tmp_path):
    ids = set()
    for i in range(5):
        (tmp_path / str(i)).mkdir()
        ids.add(identity.load_or_create(str(tmp_path / str(i)), "same-product"))
    assert len(ids) == 5 and all(is_uuid4(i) for i in ids)


CREATE = """
import os, time
from callhome import identity
flags = {flags!r}
open(os.path.join(flags, "ready.%d" % os.getpid()), "w").close()
while not os.path.exists(os.path.join(flags, "go")):
    time.sleep(0.0005)
print(identity.load_or_create({directory!r}, "acme-cli"))
"""


def test_concurrent_processes_agree_on_one_id(tmp_path):
    flags, directory = tmp_path / "flags", tmp_path / "state"
    flags.mkdir()
    directory.mkdir()
    procs = [start_host(CREATE.format(flags=str(flags), directory=str(directory))) for _ in range(10)]
    deadline = time.monotonic() + 30
    while len(os.listdir(flags)) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    (flags / "go").touch()
    outputs = [p.communicate(timeout=30) for p in procs]
    ids = {out.strip() for out, _ in outputs}
    assert len(ids) == 1, outputs
    assert is_uuid4(ids.pop())
    assert sorted(os.listdir(directory)) == [identity.ID_FILE]


@pytest.mark.parametrize("content", [
    b"",
    b"not-a-uuid\n",
    b"12345678-1234-1234-1234-123456789abc\n",      # a uuid, but not a version 4 one
    b"\xff\xfe\x00garbage\n",
    b"\n\n\n",
    b"x" * 100000,
])
def test_garbage_file_is_never_returned_and_never_raises(tmp_path, content):
    (tmp_path / identity.ID_FILE).write_bytes(content)
    assert identity.read(str(tmp_path)) is None
    result = identity.load_or_create(str(tmp_path), "p")
    assert result is None or is_uuid4(result)
    assert identity.load_or_create(str(tmp_path), "p") == result


def test_id_file_that_is_a_directory(tmp_path):
    (tmp_path / identity.ID_FILE).mkdir()
    assert identity.read(str(tmp_path)) is None
    assert identity.load_or_create(str(tmp_path), "p") is None


def _unwritable(tmp_path, how):
    if how == "read-only directory":
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o500)
        if os.access(str(directory), os.W_OK):
            directory.chmod(0o700)
            pytest.skip("running as root: chmod does not stop writes")
        return directory
    if how == "under a regular file":   # fails even for root
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "state"
    return tmp_path / "does-not-exist"


@pytest.mark.parametrize("how", ["read-only directory", "under a regular file", "missing directory"])
def test_none_when_the_id_cannot_be_persisted(tmp_path, how):
    directory = _unwritable(tmp_path, how)
    try:
        assert identity.load_or_create(str(directory), "p") is None
        assert identity.read(str(directory)) is None
    finally:
        if directory.exists():
            directory.chmod(0o700)


def test_reset_forgets_the_id(tmp_path):
    first = identity.load_or_create(str(tmp_path), "p")
    identity.reset(str(tmp_path))
    assert identity.read(str(tmp_path)) is None
    second = identity.load_or_create(str(tmp_path), "p")
    assert is_uuid4(second) and second != first
    identity.reset(str(tmp_path / "missing"))  # nothing to forget: no error


def test_never_contains_the_host_or_user_name(tmp_path):
    value = identity.load_or_create(str(tmp_path), "acme-cli")
    text = (tmp_path / identity.ID_FILE).read_text()
    assert text.splitlines()[0] == value
    words = set(text.replace("/", " ").replace(".", " ").replace(":", " ").split())
    for private in (socket.gethostname(), getpass.getuser()):
        assert private not in words and private not in value
