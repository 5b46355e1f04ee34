"""A small JSON Schema checker for the subset schema.py uses, interpreting the schema dict directly.

Why not fastjsonschema: its generated validator for the task schema is ~250 KB of Python, ~80 ms to
generate and ~140 ms to compile whenever no bytecode cache can be used (PYTHONDONTWRITEBYTECODE, a
read-only install), and caching generated code under BROKER_HOME means importing code from a
user-writable place. Interpreting the schema costs nothing to load and a few microseconds per task; a test
checks it agrees with fastjsonschema (the reference) on thousands of mutated tasks.

Supported keywords: type (name or list), properties, additionalProperties (bool or schema), required,
propertyNames (pattern), items, minItems, minimum, maximum, exclusiveMinimum, enum, pattern, anyOf.
The first violation found raises `SchemaViolation` with the path, the rule and the failing value.
"""
from __future__ import annotations

import re
from typing import Any

_PATTERNS: dict[str, re.Pattern] = {}


class SchemaViolation(ValueError):
    def __init__(self, path: list, rule: str, rule_definition: Any, value: Any, definition: dict, message: str):
        super().__init__(message)
        self.path = ["data", *path]  # the same shape as fastjsonschema's exception path
        self.rule = rule
        self.rule_definition = rule_definition
        self.value = value
        self.definition = definition
        self.message = message


def _is(kind: str, v: Any) -> bool:
    if kind == "object":
        return isinstance(v, dict)
    if kind == "array":
        return isinstance(v, list)
    if kind == "string":
        return isinstance(v, str)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "null":
        return v is None
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    raise ValueError(f"schema uses unsupported type {kind!r}")


def _pattern(p: str) -> re.Pattern:
    rx = _PATTERNS.get(p)
    if rx is None:
        rx = _PATTERNS[p] = re.compile(p)
    return rx


def validate(data: Any, schema: dict, path: list | None = None) -> None:
    _check(data, schema, path or [])


def _fail(path, rule, rule_def, value, schema, what):
    where = ".".join(str(p) for p in path) or "data"
    raise SchemaViolation(list(path), rule, rule_def, value, schema, f"{where} {what}")


def _check(v: Any, s: dict, path: list) -> None:
    if "anyOf" in s:
        errors = []
        for alt in s["anyOf"]:
            try:
                _check(v, alt, path)
                break
            except SchemaViolation as exc:
                errors.append((alt, exc))
        else:
            # when exactly one alternative is of the value's type, its error says more (a bad key, not "a
            # string or a mapping")
            typed = [e for alt, e in errors if "type" in alt and any(
                _is(k, v) for k in (alt["type"] if isinstance(alt["type"], list) else [alt["type"]]))]
            if len(typed) == 1:
                raise typed[0]
            _fail(path, "anyOf", s["anyOf"], v, s, "must be valid by one of anyOf definition")
    t = s.get("type")
    if t is not None:
        kinds = t if isinstance(t, list) else [t]
        if not any(_is(k, v) for k in kinds):
            _fail(path, "type", t, v, s, f"must be {' or '.join(kinds)}")
    if "enum" in s and v not in s["enum"]:
        _fail(path, "enum", s["enum"], v, s, f"must be one of {s['enum']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and not (v >= s["minimum"]):
            _fail(path, "minimum", s["minimum"], v, s, f"must be bigger than or equal to {s['minimum']}")
        if "exclusiveMinimum" in s and not (v > s["exclusiveMinimum"]):
            _fail(path, "exclusiveMinimum", s["exclusiveMinimum"], v, s, f"must be bigger than {s['exclusiveMinimum']}")
        if "maximum" in s and not (v <= s["maximum"]):
            _fail(path, "maximum", s["maximum"], v, s, f"must be smaller than or equal to {s['maximum']}")
    if isinstance(v, str) and "pattern" in s and not _pattern(s["pattern"]).search(v):
        _fail(path, "pattern", s["pattern"], v, s, f"must match pattern {s['pattern']}")
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            _fail(path, "minItems", s["minItems"], v, s, f"must contain at least {s['minItems']} items")
        items = s.get("items")
        if isinstance(items, dict):
            for i, x in enumerate(v):
                _check(x, items, path + [i])
    if isinstance(v, dict):
        for k in s.get("required", ()):
            if k not in v:
                _fail(path, "required", s["required"], v, s, f"must contain {s['required']} properties")
        names = s.get("propertyNames")
        if names and "pattern" in names:
            rx = _pattern(names["pattern"])
            for k in v:
                if not isinstance(k, str) or not rx.search(k):
                    _fail(path, "propertyNames", names, v, s, "must be named by propertyName definition")
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        for k, x in v.items():
            sub = props.get(k) if isinstance(k, str) else None
            if sub is not None:
                _check(x, sub, path + [k])
            elif extra is False:
                _fail(path, "additionalProperties", False, v, s, "must not contain "
                      f"{sorted(str(key) for key in v if key not in props)} properties")
            elif isinstance(extra, dict):
                _check(x, extra, path + [k])
