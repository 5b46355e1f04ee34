"""JSON Schema of a task YAML (SkyPilot's task format plus skybroker's additive keys).

Structure only: types, allowed keys, simple ranges. Semantic checks (e.g. `A100:x`, `cpus: 4+`) live in
spec.py so their messages can say exactly what is expected. Unknown keys are errors everywhere.
"""
from __future__ import annotations

_STR_OR_NULL = {"type": ["string", "null"]}
_NUM_OR_STR = {"type": ["number", "string", "null"]}
_ENV_VALUE = {"type": ["string", "number", "boolean", "null"]}
_ENV_KEY_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"

_JOB_RECOVERY = {
    "anyOf": [
        {"type": ["string", "null"]},
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "strategy": _STR_OR_NULL,
                "max_restarts_on_errors": {"type": "integer", "minimum": 0},
                "recover_on_exit_codes": {
                    "anyOf": [
                        {"type": "integer"},
                        {"type": "array", "items": {"type": "integer"}},
                    ]
                },
            },
        },
    ]
}

_AUTOSTOP = {
    "anyOf": [
        {"type": ["boolean", "integer", "string", "null"]},
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "idle_minutes": {"type": ["integer", "string"]},
                "down": {"type": "boolean"},
                "wait_for": {"type": "string"},
            },
        },
    ]
}

_PORT = {"type": ["integer", "string"]}

_RESOURCE_PROPS: dict = {
    "infra": _STR_OR_NULL,
    "cloud": _STR_OR_NULL,
    "region": _STR_OR_NULL,
    "zone": _STR_OR_NULL,
    "accelerators": {
        "anyOf": [
            {"type": ["string", "null"]},
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        ]
    },
    "accelerator_args": {"type": ["object", "null"]},
    "cpus": _NUM_OR_STR,
    "memory": _NUM_OR_STR,
    "instance_type": _STR_OR_NULL,
    "use_spot": {"type": ["boolean", "null"]},
    "disk_size": {"type": ["integer", "string", "null"]},
    "disk_tier": _STR_OR_NULL,
    "network_tier": _STR_OR_NULL,
    "ports": {"anyOf": [_PORT, {"type": "array", "items": _PORT}, {"type": "null"}]},
    "image_id": {"type": ["string", "object", "null"]},
    "labels": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "number", "boolean"]}},
    "max_hourly_cost": {"type": ["number", "null"], "exclusiveMinimum": 0},
    "autostop": _AUTOSTOP,
    "job_recovery": _JOB_RECOVERY,
    "spot_recovery": _JOB_RECOVERY,  # SkyPilot's older name
    "priority": {"type": ["integer", "null"]},
}

_RESOURCE_ENTRY = {"type": "object", "additionalProperties": False, "properties": dict(_RESOURCE_PROPS)}

RESOURCES = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        **_RESOURCE_PROPS,
        "any_of": {"type": "array", "minItems": 1, "items": _RESOURCE_ENTRY},
        "ordered": {"type": "array", "minItems": 1, "items": _RESOURCE_ENTRY},
    },
}

_ENV_MAP = {
    "type": ["object", "null"],
    "propertyNames": {"pattern": _ENV_KEY_PATTERN},
    "additionalProperties": _ENV_VALUE,
}

TASK = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": _STR_OR_NULL,
        "workdir": {
            "anyOf": [
                {"type": ["string", "null"]},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["url"],
                    "properties": {"url": {"type": "string"}, "ref": {"type": "string"}},
                },
            ]
        },
        "num_nodes": {"type": ["integer", "null"], "minimum": 1},
        "resources": RESOURCES,
        "envs": _ENV_MAP,
        "secrets": _ENV_MAP,
        "file_mounts": {
            "type": ["object", "null"],
            "additionalProperties": {"type": ["string", "object"]},
        },
        "setup": _STR_OR_NULL,
        "run": _STR_OR_NULL,
        "service": {"type": ["object", "null"]},
        "config": {"type": ["object", "null"]},
        "volumes": {"type": ["object", "null"]},
        "event_callback": _STR_OR_NULL,
        # skybroker extensions (additive)
        "deadline": {
            "anyOf": [
                {"type": ["string", "number", "null"]},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["by"],
                    "properties": {
                        "by": {"type": ["string", "number"]},
                        "compute": {"type": ["string", "number"]},
                        "policy": {"type": "string"},
                        "overhead": {"type": ["string", "number"]},
                        "tick": {"type": ["string", "number"]},
                    },
                },
            ]
        },
        "expected_hours": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
}
