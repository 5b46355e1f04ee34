"""The user's SSH key pair and the pinned host keys of instances.

`ensure_user_key(broker_home)`: one key per user under BROKER_HOME/keys/ (ed25519 via ssh-keygen, else RSA
3072 via paramiko), created once under a file lock and reused. On a PostgreSQL state (server replicas)
the pair lives in the database (table ssh_keys, the private key encrypted with the secrets key: see
jobs/store.py) and each BROKER_HOME holds a 0600 copy: the first replica to need a key stores its own,
every other one adopts it, so all of them reach the same nodes.

`HostKeyStore(path)`: trust on first use, per *instance id*: the first key an instance presents is
pinned; the same instance presenting another key later is a HostKeyMismatch. A new instance at a reused
IP is simply a new entry. The store is a JSON file updated atomically under a file lock. On a PostgreSQL
state the database's table host_keys is the truth (the first replica to see a node pins it for all of
them) and the JSON file a copy for this home's system ssh.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from skybroker.errors import BrokerError

KEY_COMMENT = "skybroker"


class SSHKeyError(BrokerError):
    pass


def _private_key_paths(keys_dir: Path) -> list[Path]:
    return [keys_dir / "id_ed25519", keys_dir / "id_rsa"]


def ensure_user_key(broker_home: Path) -> tuple[Path, str]:
    """Return (private key path, public key in OpenSSH format), generating the pair on first use."""
    keys_dir = Path(broker_home) / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    with FileLock(str(keys_dir / ".lock"), timeout=60):
        from .. import state

        if state.is_postgres():
            return _shared_key(keys_dir)
        return _local_key(keys_dir)


def existing_user_key(broker_home: Path) -> Path | None:
    """The private key ensure_user_key would return from this home's files, or None if there is none
    yet (or the pair is the server's, kept in its database)."""
    from .. import state

    if state.is_postgres():
        return None
    return next((p for p in _private_key_paths(Path(broker_home) / "keys") if p.exists()), None)


def _local_key(keys_dir: Path) -> tuple[Path, str]:
    for priv in _private_key_paths(keys_dir):
        if priv.exists():
            return priv, _public_key(priv)
    return _generate(keys_dir)


def _shared_key(keys_dir: Path) -> tuple[Path, str]:
    from cryptography.fernet import InvalidToken

    from .. import state
    from ..jobs.store import decrypt, encrypt

    db = state.db()
    row = db.execute("SELECT name, private, public FROM ssh_keys WHERE id = 1").fetchone()
    if row is None:
        priv, pub = _local_key(keys_dir)
        db.execute("INSERT OR IGNORE INTO ssh_keys (id, name, private, public, created_at) VALUES (1,?,?,?,?)",
                   (priv.name, encrypt({"key": priv.read_text()}), pub, time.time()))
        row = db.execute("SELECT name, private, public FROM ssh_keys WHERE id = 1").fetchone()  # ours, or a peer's
    name, blob, pub = row[0], bytes(row[1]), row[2]
    if name not in ("id_ed25519", "id_rsa"):
        raise SSHKeyError(f"the state database holds an SSH key named {name!r}, not id_ed25519 or id_rsa")
    try:
        text = decrypt(blob)["key"]
    except InvalidToken:
        raise SSHKeyError("cannot decrypt the broker's SSH key stored in the database: this server's secrets key "
                          "differs from the one that stored it",
                          "give every replica the same BROKER_SECRETS_KEY") from None
    path = keys_dir / name
    if not path.exists() or path.read_text() != text:
        _write_atomic(path.with_name(name + ".pub"), (pub + "\n").encode(), 0o644)
        _write_atomic(path, text.encode(), 0o600)
    for other in _private_key_paths(keys_dir):  # a different local pair would shadow the shared one: set aside
        if other != path and other.exists():
            os.replace(other, other.with_name(other.name + ".before-shared"))
            pub_other = other.with_name(other.name + ".pub")
            if pub_other.exists():
                os.replace(pub_other, other.with_name(other.name + ".pub.before-shared"))
    return path, pub


def _shared() -> bool:
    from .. import state

    return state.is_postgres()


def _shared_get(instance_id: str) -> dict | None:
    from .. import state

    row = state.db().execute("SELECT type, key, host, pinned_at FROM host_keys WHERE instance_id = ?",
                             (instance_id,)).fetchone()
    return {"type": row[0], "key": row[1], "host": row[2] or "", "pinned_at": int(row[3] or 0)} if row else None


def _shared_pin(instance_id: str, entry: dict) -> tuple[dict, bool]:
    """Pin `entry` unless a replica pinned the instance first; returns the pin that holds and whether it
    is the one made now."""
    from .. import state

    held = _shared_get(instance_id)
    if held is not None:
        return held, False
    state.db().execute("INSERT OR IGNORE INTO host_keys (instance_id, type, key, host, pinned_at) "
                       "VALUES (?, ?, ?, ?, ?)", (instance_id, entry["type"], entry["key"], entry["host"],
                                                  entry["pinned_at"]))
    held = _shared_get(instance_id)
    return held, held == entry


def _public_key(priv: Path) -> str:
    pub = priv.with_name(priv.name + ".pub")
    if pub.exists():
        text = pub.read_text().strip()
        if text:
            return text
    key = load_private_key(priv)
    text = f"{key.get_name()} {key.get_base64()} {KEY_COMMENT}"
    _write_atomic(pub, (text + "\n").encode(), 0o644)
    return text


def _generate(keys_dir: Path) -> tuple[Path, str]:
    tmpdir = Path(tempfile.mkdtemp(prefix=".gen-", dir=keys_dir))
    try:
        if shutil.which("ssh-keygen"):
            priv_tmp = tmpdir / "id_ed25519"
            r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", KEY_COMMENT,
                                "-f", str(priv_tmp)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise SSHKeyError(f"ssh-keygen failed: {r.stderr.strip()[:300]}")
            name = "id_ed25519"
        else:
            import paramiko

            key = paramiko.RSAKey.generate(3072)
            priv_tmp = tmpdir / "id_rsa"
            key.write_private_key_file(str(priv_tmp))
            (tmpdir / "id_rsa.pub").write_text(f"ssh-rsa {key.get_base64()} {KEY_COMMENT}\n")
            name = "id_rsa"
        os.chmod(priv_tmp, 0o600)
        os.chmod(tmpdir / f"{name}.pub", 0o644)
        # the public half first: the private file's existence is what marks the pair as complete
        os.replace(tmpdir / f"{name}.pub", keys_dir / f"{name}.pub")
        os.replace(priv_tmp, keys_dir / name)
        return keys_dir / name, _public_key(keys_dir / name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def load_private_key(path: Path | str):
    """paramiko PKey for an OpenSSH/PEM private key file (ed25519, ecdsa, rsa)."""
    import paramiko

    try:
        return paramiko.PKey.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError, TypeError) as e:  # TypeError: a passphrase
        raise SSHKeyError(f"cannot load SSH private key {path}: {e}",
                          hint="check the file exists, is readable and has no passphrase") from None


def _encrypted(data: bytes) -> bool:
    """Whether a private key file is passphrase-protected, read from the file itself: a PEM key's
    ENCRYPTED header, or an OpenSSH key whose cipher is not "none"."""
    import base64
    import binascii

    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        return True
    begin, end = b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----END OPENSSH PRIVATE KEY-----"
    if begin not in data or end not in data:
        return False
    body = data.split(begin, 1)[1].split(end, 1)[0]
    try:
        blob = base64.b64decode(b"".join(body.split()))
    except (binascii.Error, ValueError):
        return False
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic) or len(blob) < len(magic) + 4:
        return False
    n = int.from_bytes(blob[len(magic):len(magic) + 4], "big")
    return blob[len(magic) + 4:len(magic) + 4 + n] != b"none"


def key_problem(path: Path | str) -> str | None:
    """Why `path` cannot be used as an SSH private key (missing, unreadable, a passphrase, not a private
    key), or None when it loads. Checked before anything is created, so the launch never waits on it."""
    import paramiko

    p = Path(path)
    if not p.exists():
        return f"{path} does not exist"
    if not p.is_file():
        return f"{path} is not a file"
    try:
        data = p.read_bytes()
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}"
    head = data[:64]
    try:
        paramiko.PKey.from_path(str(p))
    except TypeError:
        return f"{path} is protected by a passphrase (skybroker needs a key without one)"
    except (OSError, paramiko.SSHException, ValueError):
        if _encrypted(data):  # older paramiko/cryptography say "could not deserialize", not TypeError
            return f"{path} is protected by a passphrase (skybroker needs a key without one)"
        if head.startswith((b"ssh-", b"ecdsa-", b"sk-")):
            return f"{path} is a public key, not the private key"
        return f"{path} is not an SSH private key (OpenSSH or PEM: ed25519, ecdsa or rsa)"
    return None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class HostKeyStore:
    """Pinned host keys per instance id (JSON at `path`, e.g. BROKER_HOME/known_hosts.json).

    Keys are (type, base64) pairs, e.g. ("ssh-ed25519", "AAAA...")."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock", timeout=30)
        self.known_hosts_dir = self.path.parent / (self.path.stem + ".d")

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise BrokerError(f"host key store {self.path} is corrupt: {e}",
                              hint="move it aside; keys will be re-pinned on next connect") from None

    def get(self, instance_id: str) -> tuple[str, str] | None:
        entry = _shared_get(instance_id) if _shared() else self._load().get(instance_id)
        return (entry["type"], entry["key"]) if entry else None

    def check_or_pin(self, instance_id: str, key_type: str, key_b64: str, *,
                     host: str = "", node_id: str = "") -> bool:
        """Pin on first sight (returns True), accept the pinned key (False), raise HostKeyMismatch for
        any other key."""
        from skybroker.runtime.runner import HostKeyMismatch

        with self._lock:
            data = self._load()
            entry = data.get(instance_id)
            new = {"type": key_type, "key": key_b64, "host": host, "pinned_at": int(time.time())}
            if _shared():  # the replicas' common pin (the file is only this home's copy of it)
                entry, first = _shared_pin(instance_id, new)
                if data.get(instance_id) != entry:
                    data[instance_id] = entry
                    _write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), 0o600)
                if first:
                    return True
            elif entry is None:
                data[instance_id] = new
                _write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), 0o600)
                return True
        if (entry["type"], entry["key"]) != (key_type, key_b64):
            raise HostKeyMismatch(node_id or instance_id, instance_id,
                                  f"{entry['type']} {fingerprint(entry['key'])}",
                                  f"{key_type} {fingerprint(key_b64)}")
        return False

    def forget(self, instance_id: str) -> None:
        """Drop an instance's pin (call when the instance is terminated)."""
        with self._lock:
            if _shared():
                from .. import state

                state.db().execute("DELETE FROM host_keys WHERE instance_id = ?", (instance_id,))
            data = self._load()
            if data.pop(instance_id, None) is not None:
                _write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), 0o600)
        try:
            self.known_hosts_file(instance_id, create=False).unlink()
        except FileNotFoundError:
            pass

    def alias(self, instance_id: str) -> str:
        return "broker-" + _SAFE.sub("_", instance_id)

    def known_hosts_file(self, instance_id: str, create: bool = True) -> Path:
        """A known_hosts file holding only this instance's pinned key under `alias(instance_id)`,
        for the system ssh (`-o HostKeyAlias=...`)."""
        path = self.known_hosts_dir / (_SAFE.sub("_", instance_id) + ".known_hosts")
        if not create:
            return path
        pinned = self.get(instance_id)
        if pinned is None:
            raise BrokerError(f"no pinned host key for instance {instance_id}")
        line = f"{self.alias(instance_id)} {pinned[0]} {pinned[1]}\n".encode()
        try:
            if path.read_bytes() == line:
                return path
        except FileNotFoundError:
            pass
        self.known_hosts_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, line, 0o600)
        return path


def fingerprint(key_b64: str) -> str:
    """OpenSSH-style SHA256 fingerprint of a base64 public key blob."""
    import base64
    import hashlib

    try:
        digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    except ValueError:
        return "?"
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
