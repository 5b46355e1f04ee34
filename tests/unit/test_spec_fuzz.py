"""Fuzzing the parser: seeded, deterministic mutations of real task shapes. Any input gives a Task or a
SpecError/UsageError (exit 2), never another exception; planning a parsed task gives a Plan or a
BrokerError. The schema checker agrees with fastjsonschema (the reference implementation) on every
mutated document."""
from __future__ import annotations

import copy
import pathlib
import random

import pytest
import yaml

from skybroker.errors import BrokerError, SpecError, UsageError
from skybroker.optimizer import optimize
from skybroker.schema import TASK
from skybroker.schema_check import SchemaViolation, validate
from skybroker.spec import load_pipeline, task_from_dict
from skybroker.spec_fields import normalise_env_scalars

COMPAT = pathlib.Path(__file__).resolve().parents[1] / "compat" / "tasks"

SEEDS = [
    {"name": "train", "num_nodes": 2, "workdir": ".",
     "resources": {"infra": "aws/us-east-1", "accelerators": {"A100:8": None, "H100:8": None}, "cpus": "32+",
                   "memory": "256+", "use_spot": True, "disk_size": 512, "disk_tier": "best", "ports": [8080, "9000-9010"],
                   "image_id": {"us-east-1": "ami-123"}, "labels": {"team": "ml"},
                   "autostop": {"idle_minutes": 30, "down": True},
                   "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 3, "recover_on_exit_codes": [33]}},
     "envs": {"MODEL": "llama", "EPOCHS": 3}, "secrets": {"HF_TOKEN": "hf_xxx"},
     "file_mounts": {"/data": "s3://my-bucket/data", "/c": {"name": "b", "mode": "MOUNT"}},
     "setup": "pip install -r requirements.txt", "run": "torchrun train.py"},
    {"resources": {"accelerators": ["A100:8", "V100:8"], "any_of": [{"cloud": "gcp"}, {"infra": "lambda"}]},
     "run": "x"},
    {"resources": {"ordered": [{"infra": "aws/us-west-2", "gpus": "H100"}, {"cloud": "azure"}], "memory": "4x"},
     "service": {"readiness_probe": "/", "replicas": 2}, "inputs": {"s3://x": 10}, "run": "x"},
    {"resources": {"cpus": 2, "instance_type": "t3.nano", "max_hourly_cost": 1.5, "spot_recovery": "none"},
     "deadline": {"by": "60h", "compute": "48h"}, "run": "x"},
    {"resources": {"accelerators": "tpu-v4-8", "accelerator_args": {"runtime_version": "tpu-vm-base"}},
     "config": {"kubernetes": {"provision_timeout": 10}}, "run": "x"},
]

WEIRD = [None, True, False, 0, -1, 1, 2.5, 1e309, -1e309, float("nan"), "", " ", "0", "-3", "4+", "4x", "1e309",
         "A100:1e309", "A100:-1", "A100:0", ":", "tpu-v4-8", "aws/*/zone", "k8s/a/b/c", "$X${Y}", "x" * 500,
         "\u00e9\u4e2d\U0001F600", "docker:ubuntu", "s3://b", "~/nope", "../..", {}, [], [None], [[]], {"a": None},
         {"": ""}, {1: 2}, {"A100": None}, {"A100": "8"}, [{"cloud": "aws"}], {"strategy": 5}, {"idle_minutes": -1}]


def _mutate(d, rnd: random.Random, depth=0):
    """Return a mutated deep copy: change one value somewhere, add/remove keys, or retype."""
    d = copy.deepcopy(d)
    if not isinstance(d, (dict, list)) or (depth > 0 and rnd.random() < 0.3):
        return rnd.choice(WEIRD) if rnd.random() < 0.8 else _mutate(rnd.choice(SEEDS), rnd, depth + 1)
    if isinstance(d, list):
        if not d or rnd.random() < 0.2:
            return d + [rnd.choice(WEIRD)]
        i = rnd.randrange(len(d))
        d[i] = _mutate(d[i], rnd, depth + 1)
        return d
    op = rnd.random()
    keys = list(d)
    if op < 0.15 and keys:
        d.pop(rnd.choice(keys))
    elif op < 0.3:
        d[rnd.choice(["nmae", "resources", "envs", "secrets", "gpus", "any_of", "cloud", "file_mounts", "run",
                      "num_nodes", "accelerators", "workdir", "config", "pool", 7, None])] = rnd.choice(WEIRD)
    elif keys:
        k = rnd.choice(keys)
        d[k] = _mutate(d[k], rnd, depth + 1)
    return d


def _corpus_seeds() -> list:
    out = list(SEEDS)
    for p in sorted(COMPAT.glob("*.yaml"))[:80]:
        out.extend(d for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict))
    return out


def _cases(n: int, seed: int) -> list:
    rnd = random.Random(seed)
    seeds = _corpus_seeds()
    cases = []
    for _ in range(n):
        d = rnd.choice(seeds)
        for _ in range(rnd.randint(1, 3)):
            d = _mutate(d, rnd)
        cases.append(d)
    return cases


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_fuzzed_tasks_parse_or_fail_cleanly():
    ok = bad = 0
    for i, d in enumerate(_cases(3000, seed=12)):
        try:
            t = task_from_dict(d, source="fuzz.yaml", overrides={"envs": {"MODEL": "m"}} if i % 7 == 0 else None)
        except (SpecError, UsageError) as exc:
            assert exc.exit_code == 2 and exc.message.startswith("fuzz.yaml"), (d, exc.message)
            bad += 1
            continue
        ok += 1
        if i % 10 == 0:  # planning every tenth success keeps the test fast
            try:
                optimize(t, ("aws", "gcp", "azure"))
            except BrokerError:
                pass
    assert ok > 300 and bad > 300  # both paths exercised


def test_fuzzed_yaml_text(tmp_path):
    rnd = random.Random(7)
    texts = [yaml.safe_dump(d, sort_keys=False) for d in _cases(300, seed=3) if isinstance(d, dict)]
    junk = ["---\n---\n", "run: [\n", "a: b: c\n", "- 1\n- 2\n", "run: x\n---\n- 1\n", "\t\trun: x", "{", "&a [*a]",
            "run: !!python/object:os.system x\n", "key: &a\n  - *a\n"]
    for i, text in enumerate(texts + junk):
        if i < len(texts) and rnd.random() < 0.5:  # cut or splice text
            cut = rnd.randrange(len(text) + 1)
            text = text[:cut] + rnd.choice(["", "\n---\n", ":", "  x", "\x00"]) + text[cut:]
        p = tmp_path / f"f{i}.yaml"
        p.write_text(text)
        try:
            load_pipeline(p)
        except (SpecError, UsageError):
            pass


def test_schema_checker_agrees_with_fastjsonschema():
    fastjsonschema = pytest.importorskip("fastjsonschema")
    reference = fastjsonschema.compile(TASK)
    disagree = []
    for d in _cases(3000, seed=5):
        if not isinstance(d, dict):
            continue
        if "nan" in repr(d):
            continue  # NaN fails our range checks (min/exclusiveMinimum); fastjsonschema lets it through
        d = copy.deepcopy(d)
        normalise_env_scalars(d)
        try:
            validate(d, TASK)
            ours = True
        except SchemaViolation:
            ours = False
        try:
            reference(d)
            theirs = True
        except fastjsonschema.JsonSchemaException:
            theirs = False
        except Exception:  # the reference itself cannot handle some inputs (non-string keys): skip those
            continue
        if ours != theirs:
            disagree.append(d)
    assert not disagree, disagree[:3]
