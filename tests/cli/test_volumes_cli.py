"""`broker volumes` as a real subprocess: apply / ls / delete of a local-dir volume, and refusals that
name the field with no traceback."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import broker_cmd


def run(*args, cwd=None):
    return subprocess.run(broker_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def test_apply_ls_delete_and_refusals(tmp_path):
    good = tmp_path / "v.yaml"
    good.write_text("name: scratch\ntype: local-dir\nsize: 2Gi\n")
    r = run("volumes", "apply", good)  # stdin is not a terminal: creating goes ahead
    assert r.returncode == 0, r.stderr
    (v,) = json.loads(run("volumes", "ls", "--json").stdout)
    assert (v["name"], v["type"], v["size_gb"], v["cluster"]) == ("scratch", "local-dir", 2, None)
    assert "scratch" in run("volumes", "ls").stdout
    assert run("volumes", "delete", "scratch").returncode == 2  # destroying needs -y without a terminal
    assert run("volumes", "delete", "scratch", "-y").returncode == 0
    assert json.loads(run("volumes", "ls", "--json").stdout) == []
    missing = run("volumes", "delete", "nope", "-y")
    assert missing.returncode == 5 and "no volume named 'nope'" in missing.stderr

    for body, words in (("name: p\ntype: k8s-pvc\nsize: 1Gi\n", "type: volume type k8s-pvc"),
                        ("name: p\ntype: aws-ebs\nsize: lots\n", "size: 'lots' is not a size"),
                        ("name: Bad_Name\ntype: local-dir\nsize: 1\n", "name: 'Bad_Name' is not a volume name"),
                        # a place the catalogs lack is refused before the cloud is called (it went to the cloud:
                        # an unknown region's endpoint gave exit 4 or, from moto, a traceback)
                        ("name: p\ntype: aws-ebs\ninfra: aws/mars-1\nsize: 1\n", "infra: no region 'mars-1' on aws"),
                        ("name: p\ntype: gcp-pd\ninfra: gcp/us-central1/us-central1-q\nsize: 1\n",
                         "infra: no zone 'us-central1-q' on gcp/us-central1")):
        f = tmp_path / "bad.yaml"
        f.write_text(body)
        r = run("volumes", "apply", "-y", f)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_volume_file_that_is_not_a_mapping_is_described_as_a_volume_file(tmp_path):
    """It said "a task looks like: name: x\\n run: echo hi" (with a literal backslash-n)."""
    from skybroker.errors import SpecError
    from skybroker.taskfile import read_yaml_docs

    (tmp_path / "vol.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError) as ei:
        read_yaml_docs(tmp_path / "vol.yaml", "volume")
    assert "volume fields" in ei.value.message and "type: aws-ebs" in ei.value.hint and "\\n" not in ei.value.hint
