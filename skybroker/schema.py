"""JSON Schema of a task YAML (SkyPilot's task format plus skybroker's additive keys).

Structure only: types, allowed keys, simple ranges; checked by schema_check.py (no generated code). Semantic
checks (e.g. `A100:x`, `cpus: 4+`) and what each SkyPilot field means here (accepted, warned about, or
refused by name) live in spec.py / spec_fields.py, so their messages can say exactly what is expected.
Unknown keys are errors everywhere. Every field SkyPilot's own task schema accepts is listed, so a SkyPilot
task never fails with "unknown key": unsupported ones are refused by name with what to do instead.
"""
from __future__ import annotations

_STR_OR_NULL = {"type": ["string", "null"]}
_NUM_OR_STR = {"type": ["number", "string", "null"]}
_ENV_VALUE = {"type": ["string", "number", "boolean", "null"]}
_ENV_KEY_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
_OBJ = {"type": ["object", "null"]}

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
                        {"type": "integer", "minimum": 0, "maximum": 255},
                        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
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
                "hook": {"type": "string"},
                "hook_timeout": {"type": "integer", "minimum": 1},
            },
        },
    ]
}

_PORT = {"type": ["integer", "string"]}

_ACCELERATORS = {
    "anyOf": [
        {"type": ["string", "null"]},
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
    ]
}

_RESOURCE_PROPS: dict = {
    "infra": _STR_OR_NULL,
    "cloud": _STR_OR_NULL,
    "region": _STR_OR_NULL,
    "zone": _STR_OR_NULL,
    "accelerators": _ACCELERATORS,
    "gpus": _ACCELERATORS,  # SkyPilot's newer name for accelerators
    "accelerator_args": {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {
            "runtime_version": {"type": "string"},
            "tpu_name": {"type": "string"},
            "tpu_vm": {"type": "boolean"},
            "gcp_queued_resource": {"type": "boolean"},
        },
    },
    "cpus": _NUM_OR_STR,
    "memory": _NUM_OR_STR,
    "instance_type": _STR_OR_NULL,
    "use_spot": {"type": ["boolean", "null"]},
    "disk_size": {"type": ["integer", "string", "null"]},
    "ephemeral_storage": {"type": ["integer", "string", "null"]},  # SkyPilot's deprecated disk_size
    "disk_tier": _STR_OR_NULL,
    "network_tier": _STR_OR_NULL,
    "local_disk": _STR_OR_NULL,
    "ports": {"anyOf": [_PORT, {"type": "array", "items": _PORT}, {"type": "null"}]},
    "image_id": {"type": ["string", "object", "null"]},
    "labels": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "number", "boolean"]}},
    "max_hourly_cost": {"type": ["number", "null"], "exclusiveMinimum": 0},
    "autostop": _AUTOSTOP,
    "job_recovery": _JOB_RECOVERY,
    "spot_recovery": _JOB_RECOVERY,  # SkyPilot's older name
    "priority": {"type": ["integer", "null"]},
    "priority_class": _STR_OR_NULL,
    "volumes": {"type": ["array", "null"]},  # Kubernetes ephemeral volumes: refused by name
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

_STORAGE = {  # file_mounts value in its mapping form (SkyPilot storage)
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "source": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
        "store": {"type": "string"},
        "persistent": {"type": "boolean"},
        "mode": {"type": "string"},
        "mount_options": {"type": "string"},
        "type": {"type": "string"},
        "config": {"type": "object"},
        "_bucket_sub_path": {"type": "string"},
    },
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
        "secrets": {"anyOf": [_ENV_MAP, {"type": "array", "items": {"type": "string"}}]},
        "managed_secrets": {"type": ["array", "null"]},
        "file_mounts": {
            "type": ["object", "null"],
            "additionalProperties": {"anyOf": [{"type": "string"}, _STORAGE]},
        },
        "setup": _STR_OR_NULL,
        "run": _STR_OR_NULL,
        "service": _OBJ,
        "pool": _OBJ,
        "config": _OBJ,
        "volumes": _OBJ,
        "volume_mounts": {"type": ["array", "null"]},
        "inputs": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
        "outputs": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
        "event_callback": _STR_OR_NULL,
        "api_server_access": {"type": ["boolean", "null"]},
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
        "budget": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "required": ["max_cost"],
            "properties": {
                "max_cost": {"type": "number", "exclusiveMinimum": 0},
                "hours": {"type": ["string", "number", "null"]},
            },
        },
    },
}
