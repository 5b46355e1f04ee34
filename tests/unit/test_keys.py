"""keys.key_problem: why a file cannot be used as an SSH private key (checked before anything is created)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from skybroker.runtime.keys import key_problem


@pytest.fixture
def pair(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_a_usable_key_has_no_problem(pair):
    assert key_problem(pair) is None


def test_each_unusable_file_is_said_as_such(pair, tmp_path, monkeypatch):
    (tmp_path / "junk").write_text("not a key\n")
    assert key_problem(tmp_path / "nope") == f"{tmp_path / 'nope'} does not exist"
    assert key_problem(tmp_path) == f"{tmp_path} is not a file"
    assert key_problem(f"{pair}.pub") == f"{pair}.pub is a public key, not the private key"
    assert "is not an SSH private key" in key_problem(tmp_path / "junk")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: play the user who cannot
    assert key_problem(pair) == f"{pair} cannot be read: Permission denied"


def test_a_passphrase_is_said(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(key)], check=True)
    assert key_problem(key) == f"{key} is protected by a passphrase (skybroker needs a key without one)"


def test_a_passphrase_is_said_where_paramiko_cannot_tell(tmp_path, monkeypatch):
    """paramiko 3.4 with cryptography 42 (the declared floors) raises ValueError("Could not deserialize key
    data ...") for an encrypted key, not TypeError: the file itself says it is encrypted."""
    import paramiko

    keys = {}
    for name, args, pw in [("ed", ["-t", "ed25519"], "pw"), ("pem", ["-t", "rsa", "-b", "2048", "-m", "PEM"], "a-passphrase"),
                           ("plain", ["-t", "ed25519"], "")]:
        keys[name] = tmp_path / name
        subprocess.run(["ssh-keygen", "-q", *args, "-N", pw, "-f", str(keys[name])], check=True)

    def old_paramiko(path):
        raise ValueError("Could not deserialize key data. The data may be in an incorrect format, it may be "
                         "encrypted with an unsupported algorithm, or it may be an unsupported key type")

    monkeypatch.setattr(paramiko.PKey, "from_path", staticmethod(old_paramiko))
    for name in ("ed", "pem"):
        assert key_problem(keys[name]) == f"{keys[name]} is protected by a passphrase (skybroker needs a key without one)"
    assert "is not an SSH private key" in key_problem(keys["plain"])  # cipher "none": not a passphrase
