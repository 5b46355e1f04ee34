"""The client ↔ server encoding of api.py's arguments and results, as JSON.

The same objects cross the wire that api.py takes and returns (Task, Plan, ClusterRecord, JobStatus,
LaunchResult, ManagedJob, ...), so commands render a server's answer exactly like a local one. Values are
tagged: dataclasses by their class (only skybroker's own dataclasses and enums are ever rebuilt, never
an arbitrary type, so a peer cannot make the other side construct anything else), tuples, sets, bytes,
dicts, and secret strings (spec.Secret, which keep hiding their value in repr after the trip).

No pickle: a hostile server or client can at worst send wrong values of known types.
"""
from __future__ import annotations

import base64
import dataclasses
import enum
import importlib
import json
from typing import Any

from .errors import BrokerError


MAX_UPLOAD = 1 << 30  # a task's local sources as one tar.gz (the client checks it before sending; the server too)


class WireError(BrokerError):
    """A message that is not a valid encoding (version skew between client and server, or a bug)."""


def dump(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, str):
        if type(obj).__name__ == "Secret":
            return {"__secret": str.__str__(obj)}
        return str(obj) if type(obj) is not str else obj
    if isinstance(obj, enum.Enum):
        return {"__e": _name(type(obj)), "v": obj.value}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__c": _name(type(obj)),
                "f": {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__t": [dump(x) for x in obj]}
    if isinstance(obj, list):
        return [dump(x) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return {"__s": [dump(x) for x in obj]}
    if isinstance(obj, dict):
        return {"__d": [[dump(k), dump(v)] for k, v in obj.items()]}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"__b": base64.b64encode(bytes(obj)).decode()}
    raise WireError(f"cannot send a {type(obj).__name__} to the other side")


def _name(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_CLASSES: dict[tuple[str, str], type] = {}


def _cls(name: str, kind: str):
    cls = _CLASSES.get((name, kind))
    if cls is not None:
        return cls
    module, _, qual = name.partition(":")
    if not (module == "skybroker" or module.startswith("skybroker.")) or not qual or "." in qual:
        raise WireError(f"refusing to rebuild {name!r}: not one of skybroker's types")
    try:
        cls = getattr(importlib.import_module(module), qual)
    except (ImportError, AttributeError):
        raise WireError(f"unknown type {name!r} (client and server versions differ?)",
                        "install the same skybroker version on the client and the server") from None
    ok = dataclasses.is_dataclass(cls) if kind == "c" else (isinstance(cls, type) and issubclass(cls, enum.Enum))
    if not ok:
        raise WireError(f"refusing to rebuild {name!r}: not a skybroker {'dataclass' if kind == 'c' else 'enum'}")
    _CLASSES[(name, kind)] = cls
    return cls


def load(obj: Any) -> Any:
    if isinstance(obj, list):
        return [load(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__t" in obj:
        return tuple(load(x) for x in obj["__t"])
    if "__d" in obj:
        return {_key(load(k)): load(v) for k, v in obj["__d"]}
    if "__c" in obj:
        cls = _cls(obj["__c"], "c")
        fields = {k: load(v) for k, v in obj["f"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            inst = cls(**{k: v for k, v in fields.items() if k in init})
        except TypeError as exc:
            raise WireError(f"cannot rebuild {obj['__c']}: {exc}", "client and server versions differ?") from None
        for k, v in fields.items():  # fields set after __init__ (init=False)
            if k not in init:
                object.__setattr__(inst, k, v)
        return inst
    if "__e" in obj:
        try:
            return _cls(obj["__e"], "e")(obj["v"])
        except ValueError:
            raise WireError(f"{obj['v']!r} is not a {obj['__e']}") from None
    if "__s" in obj:
        return frozenset(load(x) for x in obj["__s"])
    if "__b" in obj:
        return base64.b64decode(obj["__b"])
    if "__secret" in obj:
        from .spec import Secret

        return Secret(obj["__secret"])
    raise WireError("malformed message from the other side")


def _key(k):
    return tuple(k) if isinstance(k, list) else k


def dumps(obj: Any) -> str:
    return json.dumps(dump(obj), separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    try:
        return load(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"malformed message from the other side ({exc})") from None


def error_dict(exc: BrokerError) -> dict:
    return {"message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}


def error_from(d: dict) -> BrokerError:
    return BrokerError(str(d.get("message") or "server error"), d.get("hint"), int(d.get("exit_code") or 1))
