"""Reading a task file: bytes → YAML data (with node positions) → validated against the JSON Schema.

Every failure is a SpecError that names the file, the line when known, the field path and the fix.
The schema (schema.py) is compiled by fastjsonschema into Python code, cached under BROKER_HOME/cache.
"""
from __future__ import annotations

import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from .errors import SpecError


_validator = None


def _load_validator():
    """fastjsonschema turns the schema into Python code; generating it costs ~60 ms, so the generated
    module is cached under BROKER_HOME/cache (keyed by the schema's hash; Python caches its bytecode)."""
    import hashlib
    import importlib
    import json
    import sys

    import fastjsonschema

    from .schema import TASK

    digest = hashlib.sha256(json.dumps(TASK, sort_keys=True).encode()).hexdigest()[:16]
    name = f"broker_task_validator_{digest}"
    try:
        from .paths import ensure_home

        cache = ensure_home() / "cache"
        cache.mkdir(exist_ok=True)
        path = cache / f"{name}.py"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(fastjsonschema.compile_to_code(TASK))
            os.replace(tmp, path)
        if str(cache) not in sys.path:
            sys.path.append(str(cache))
        return importlib.import_module(name).validate
    except (OSError, ImportError, SyntaxError):
        return fastjsonschema.compile(TASK)  # no writable cache: compile in memory


def _validate(data: Any, source: str, root_node) -> None:
    global _validator
    import fastjsonschema

    if _validator is None:
        _validator = _load_validator()
    try:
        _validator(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _schema_error(exc, source, root_node) from None


def _schema_error(exc, source: str, root_node) -> SpecError:
    path = [p for p in (exc.path or [])[1:]]
    field_path = ".".join(str(p) for p in path) or "(top level)"
    rule, definition = exc.rule, exc.rule_definition
    hint = None
    value = exc.value
    if rule == "additionalProperties" and isinstance(value, dict):
        allowed = sorted((exc.definition or {}).get("properties", {}))
        unknown = sorted(k for k in value if k not in allowed)
        key = unknown[0] if unknown else "?"
        close = get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        where = field_path if path else None
        line = _line_of(root_node, path + [key], key_line=True)
        msg = f"unknown key {key!r}" + (f" in {where}" if where else "")
        return SpecError(msg, hint, source=_with_line(source, line), field=None)
    if rule == "propertyNames":
        hint = "environment variable names are letters, digits and _ and do not start with a digit"
        msg = "invalid environment variable name"
    elif rule in ("type", "anyOf"):
        want = definition if rule == "type" else _describe_anyof(exc.definition)
        msg = f"expected {_type_words(want)}, got {_type_name(value)} {_short(value)}"
    elif rule in ("minimum", "exclusiveMinimum"):
        msg = f"{_short(value)} is too small (minimum {definition})"
    elif rule == "minItems":
        msg = "must not be empty"
    elif rule == "required":
        msg = f"missing required key(s): {', '.join(definition)}"
    else:
        msg = exc.message.replace("data.", "").replace("data ", "")
    line = _line_of(root_node, path)
    return SpecError(msg, hint, source=_with_line(source, line), field=field_path)


def _describe_anyof(definition) -> list[str]:
    kinds: list[str] = []
    for alt in (definition or {}).get("anyOf", []):
        t = alt.get("type")
        for k in (t if isinstance(t, list) else [t] if t else []):
            if k not in kinds:
                kinds.append(k)
    return kinds


def _type_words(t) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true/false", "null": "nothing"}
    ts = t if isinstance(t, list) else [t]
    words = [names.get(x, str(x)) for x in ts if x != "null"]
    return " or ".join(words) or "a value"


def _type_name(v) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(v), type(v).__name__)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _with_line(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line else source


def _line_of(node, path: list, key_line: bool = False) -> int | None:
    """1-based line of the YAML node at `path` (or of the key itself when key_line)."""
    try:
        import yaml

        cur = node
        line = None
        for part in path:
            if isinstance(cur, yaml.MappingNode):
                for k, v in cur.value:
                    if k.value == str(part):
                        line = k.start_mark.line + 1
                        cur = v
                        break
                else:
                    return line
            elif isinstance(cur, yaml.SequenceNode) and isinstance(part, int) and part < len(cur.value):
                cur = cur.value[part]
                line = cur.start_mark.line + 1
            else:
                return line
        return line if key_line else (cur.start_mark.line + 1 if cur is not None else line)
    except Exception:  # line numbers are a courtesy; never fail the error path
        return None


def read_yaml(path: str | os.PathLike) -> tuple[Any, Any, str]:
    """Read a task file. Returns (data, yaml root node, display name)."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise SpecError("file not found", "check the path; a task is a YAML file like examples/hello.yaml",
                        source=shown)
    if p.is_dir():
        raise SpecError("is a directory, not a task file", "pass the YAML file inside it", source=shown)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", "check the file's permissions", source=shown) from None
    return parse_yaml_bytes(raw, shown)


def parse_yaml_bytes(raw: bytes, shown: str) -> tuple[Any, Any, str]:
    import yaml

    if b"\x00" in raw[:8192]:
        raise SpecError("is not a text file (binary data)", "a task is a YAML text file", source=shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"is not UTF-8 text (byte {exc.start})", "save the task file as UTF-8",
                        source=shown) from None
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        raise SpecError("is empty", "a task needs at least `run:` (see examples/hello.yaml)", source=shown)
    Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark else shown
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"malformed YAML: {problem}", "check indentation and quoting around that line",
                        source=where) from None
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of task fields at the top level, got {_type_name(data)}",
                        "a task looks like:  name: x\\n  run: echo hi", source=shown)
    return data, node, shown
