"""Reading a task file: bytes → YAML documents (with node positions) → validated against the JSON Schema.

Every failure is a SpecError that names the file, the line when known, the field path and the fix.
The schema (schema.py) is interpreted by schema_check.py: nothing is generated, compiled or cached.
"""
from __future__ import annotations

import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from .errors import SpecError


def _validate(data: Any, source: str, root_node) -> None:
    from .schema import TASK
    from .schema_check import SchemaViolation, validate

    try:
        validate(data, TASK)
    except SchemaViolation as exc:
        raise _schema_error(exc, source, root_node) from None


def _schema_error(exc, source: str, root_node) -> SpecError:
    path = [p for p in (exc.path or [])[1:]]
    field_path = ".".join(str(p) for p in path) or "(top level)"
    rule, definition = exc.rule, exc.rule_definition
    hint = None
    value = exc.value
    secret = bool(path) and path[0] == "secrets"
    if rule == "additionalProperties" and isinstance(value, dict):
        allowed = sorted((exc.definition or {}).get("properties", {}))
        unknown = sorted((k for k in value if k not in allowed), key=str)
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
        msg = f"expected {_type_words(want)}, got {_type_name(value)}" + ("" if secret or value is None else f" {_short(value)}")
    elif rule == "minimum":
        msg = f"{_short(value)} is too small (minimum {definition})"
    elif rule == "exclusiveMinimum":  # the bound itself is refused: `max_cost: 0` is not "minimum 0"
        msg = f"{_short(value)} is too small (must be greater than {definition})"
    elif rule == "maximum":
        msg = f"{_short(value)} is too large (maximum {definition})"
    elif rule == "minItems":
        msg = "must not be empty"
    elif rule == "required":
        msg = f"missing required key(s): {', '.join(definition)}"
    else:
        msg = "is not valid here" if secret else exc.message.replace("data.", "").replace("data ", "")
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
    """Read a single-task file. Returns (data, yaml root node, display name). A file of several YAML
    documents is a pipeline: its error says so (load it with spec.load_pipeline)."""
    docs, shown = read_yaml_docs(path)
    if len(docs) != 1:
        raise SpecError(f"is a pipeline of {len(docs)} tasks (YAML documents separated by ---), not one task",
                        "run a pipeline as managed jobs: `broker jobs launch FILE`; `broker launch` takes one task",
                        source=shown)
    data, node = docs[0]
    return data, node, shown


_LOOKS = {"task": "a task looks like:  name: x  /  run: echo hi (one field per line)",
          "volume": "a volume file looks like:  name: data  /  type: aws-ebs  /  size: 100Gi (one field per line)"}


def read_yaml_docs(path: str | os.PathLike, what: str = "task") -> tuple[list[tuple[Any, Any]], str]:
    """Every non-empty YAML document of a task file: ([(data, node), ...], display name). A leading
    document holding only `name:` (SkyPilot's pipeline header) is kept; callers decide what it means."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        hint = "check the path; a task is a YAML file like examples/hello.yaml"
        if p.parts[:1] == ("examples",) and not Path("examples").exists():
            hint = "the example tasks ship with skybroker: `broker examples` copies them into ./examples"
        raise SpecError("file not found", hint, source=shown)
    if p.is_dir():
        raise SpecError("is a directory, not a task file", "pass the YAML file inside it", source=shown)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", "check the file's permissions", source=shown) from None
    return parse_yaml_docs(raw, shown, what), shown


def parse_yaml_bytes(raw: bytes, shown: str) -> tuple[Any, Any, str]:
    docs = parse_yaml_docs(raw, shown)
    if len(docs) != 1:
        raise SpecError(f"is a pipeline of {len(docs)} tasks (YAML documents separated by ---), not one task",
                        "run a pipeline as managed jobs: `broker jobs launch FILE`", source=shown)
    return docs[0][0], docs[0][1], shown


def parse_yaml_docs(raw: bytes, shown: str, what: str = "task") -> list[tuple[Any, Any]]:
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
    docs = []
    try:
        loader = Loader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is not None:
                    docs.append((loader.construct_document(node), node))
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark else shown
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = "check indentation and quoting around that line"
        if "escape" in problem or "hexdecimal" in problem or "hexadecimal" in problem:
            hint = ("inside double quotes a backslash starts an escape (a Windows path's \\U, \\d...): "
                    "use single quotes ('C:\\Users\\me') or forward slashes")
        raise SpecError(f"malformed YAML: {problem}", hint, source=where) from None
    except RecursionError:
        raise SpecError("malformed YAML: nested too deeply", "a task is a shallow mapping of fields",
                        source=shown) from None
    docs = [(d, n) for d, n in docs if d is not None]
    if not docs:
        raise SpecError("is empty", "a task needs at least `run:` (see examples/hello.yaml)", source=shown)
    for i, (data, _) in enumerate(docs):
        if not isinstance(data, dict):
            where = "" if len(docs) == 1 else f" (document {i + 1})"
            raise SpecError(f"expected a mapping of {what} fields at the top level{where}, got {_type_name(data)}",
                            _LOOKS[what], source=shown)
    return docs
