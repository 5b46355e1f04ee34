"""A bucket (moto's S3 server) and a local source uploaded to a named bucket reach the job on real sshd
nodes (network namespaces, the `ssh` cloud): COPY is staged on this machine and rsynced over SSH, so the
nodes need neither credentials nor a route to the store. Root only (skipped otherwise).

MOUNT is not exercised here: on these test nodes the node user cannot use FUSE (the setuid fusermount3
cannot open /dev/fuse in this sandbox), and the emulators listen on this machine's loopback; MOUNT runs
for real on the local cloud in test_buckets.py."""
from __future__ import annotations

import shutil

import pytest

from tests.infra.moto_server import MotoServer
from tests.integration.test_ssh_cluster import broker, task
from tests.integration.local_helpers import declare_pool

pytestmark = [pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed"), pytest.mark.slow]


@pytest.fixture(scope="module")
def moto():
    with MotoServer(warm=False) as srv:
        yield srv


@pytest.fixture
def lab(node_pool, node_key, moto, monkeypatch):
    key, pub = node_key
    nodes = node_pool.start(2, pub)
    declare_pool(nodes, key)
    for k, v in moto.env().items():
        monkeypatch.setenv(k, v)
    yield nodes
    for n in nodes:
        if n.alive:
            node_pool.kill(n)


def test_bucket_and_uploaded_source_reach_every_sshd_node(lab, moto, tmp_path):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url, aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="ssh-data")
    s3.put_object(Bucket="ssh-data", Key="set/part-0.txt", Body=b"part zero")
    src = tmp_path / "cfg"
    src.mkdir()
    (src / "params.yaml").write_text("lr: 0.1\n")
    t = task(tmp_path, """
num_nodes: 2
resources: {infra: ssh/lab}
file_mounts:
  ~/data: s3://ssh-data/set
  ~/cfg:
    name: ssh-uploaded
    source: %s
    mode: COPY
    persistent: false
run: |
  echo "rank=$SKYPILOT_NODE_RANK $(cat ~/data/part-0.txt) / $(cat ~/cfg/params.yaml) / aws=$(env | grep -c '^AWS_')"
""" % src)
    r = broker("launch", "-y", "-c", "bk", str(t), check=True)
    got = sorted(line.split("rank=")[1] for line in r.stdout.splitlines() if "rank=" in line)
    assert got == ["0 part zero / lr: 0.1 / aws=0", "1 part zero / lr: 0.1 / aws=0"], r.stdout
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="ssh-uploaded")["Contents"]] == ["params.yaml"]
    for n in lab:  # on the node's own disk
        assert (n.home / "data" / "part-0.txt").read_text() == "part zero"
    broker("down", "-y", "bk", check=True)
    assert "ssh-uploaded" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}  # persistent: false
    assert "ssh-data" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
