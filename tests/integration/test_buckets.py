"""Buckets in file_mounts end to end, against real emulators (tests/infra/storage_emulators.py: moto's
S3+STS server, gcp-storage-emulator, Azurite), with the real `broker` CLI on the `local` cloud (nodes
are sandboxes on this machine, so FUSE mounts work when we are root). The same COPY path on real sshd
nodes is in test_buckets_ssh.py."""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.infra.moto_server import MotoServer
from tests.infra.storage_emulators import Azurite, GcsEmulator
from tests.integration.local_helpers import (
    broker,
    broker_home,
    kill_leftovers,
    node_dir,
    node_lines,
    write_task,
    cluster_dir,
)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for file mounts")


@pytest.fixture(scope="module")
def moto():
    with MotoServer(warm=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def gcs():
    why = GcsEmulator.missing()
    if why:
        pytest.skip(why)
    with GcsEmulator() as g:
        yield g


@pytest.fixture(scope="module")
def azurite():
    why = Azurite.missing()
    if why:
        pytest.skip(why)
    with Azurite() as a:
        yield a


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())
    from skybroker.clouds.local import _unmount_under

    _unmount_under(broker_home())  # a failed test's bucket mounts (pytest could not remove its tmp dir)


@pytest.fixture
def s3(moto, monkeypatch):
    for k, v in moto.env().items():
        monkeypatch.setenv(k, v)
    import boto3

    return boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _keys(s3, bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def _exists(s3, bucket) -> bool:
    return bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_s3_uri_is_copied_to_every_node_and_nodes_get_no_credentials(s3, tmp_path):
    s3.create_bucket(Bucket="copy-src")
    for key, body in (("pre/a.txt", "alpha"), ("pre/sub/b.txt", "beta"), ("other/x.txt", "not mine")):
        s3.put_object(Bucket="copy-src", Key=key, Body=body.encode())
    t = write_task(tmp_path / "t.yaml", num_nodes=2, file_mounts={"~/data": "s3://copy-src/pre",
                                                                  "~/one.txt": "s3://copy-src/pre/sub/b.txt"},
                   run='echo "got $(cat ~/data/a.txt) $(cat ~/data/sub/b.txt) $(cat ~/one.txt)"; '
                       'test -e ~/data/x.txt || echo "no other"; env | grep -c "^AWS_" || true')
    cache = broker_home() / "storage-cache"
    stale = cache / "s3" / "stale-0123456789abcdef"  # a COPY of long ago, by a cluster long gone: pruned
    stale.mkdir(parents=True)
    (stale / "big.bin").write_bytes(b"x" * 1000)
    (cache / "s3" / "stale-0123456789abcdef.use").write_text(json.dumps({"used": time.time() - 30 * 86400,
                                                                          "clusters": ["gone"]}))
    r = broker("launch", "-y", "-c", "cp", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = node_lines(r.stdout)
    for rank in (0, 1):
        assert lines[rank] == ["got alpha beta beta", "no other", "0"], r.stdout
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert not stale.exists() and not (cache / "s3" / "stale-0123456789abcdef.use").exists()
    mine = [json.loads(p.read_text()) for p in (cache / "s3").glob("copy-src-*.use")]
    assert len(mine) == 2 and all(u["clusters"] == ["cp"] for u in mine), mine  # kept while cp is recorded
    assert sorted(p.name for p in (node_dir("cp", 0) / "data").iterdir()) == ["a.txt", "sub"]
    assert "Traceback" not in r.stderr


def test_copy_of_a_named_bucket_without_source_copies_it_or_creates_it_empty(s3, tmp_path):
    """SkyPilot's `{name, mode: COPY}` with no `source`: the bucket of that name is copied to the node; a
    bucket that does not exist yet is created (empty, tagged ours) and the mount point exists, empty."""
    s3.create_bucket(Bucket="named-have")
    s3.put_object(Bucket="named-have", Key="m.txt", Body=b"model\n")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/have": {"name": "named-have", "store": "s3", "mode": "COPY"},
                                                     "~/new": {"name": "named-new-empty", "store": "s3",
                                                               "mode": "COPY", "persistent": False}},
                   run='cat ~/have/m.txt; test -d ~/new && echo "new $(ls -A ~/new | wc -l)"')
    r = broker("launch", "-y", "-c", "cpn", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["model", "new 0"], r.stdout
    assert "named-new-empty" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert broker("down", "-y", "cpn").returncode == 0
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert "named-have" in names and "named-new-empty" not in names  # ours and not persistent: gone on down


def test_local_source_uploaded_to_gcs_read_on_node_and_gone_after_down(gcs, monkeypatch, tmp_path):
    for k, v in gcs.env().items():
        monkeypatch.setenv(k, v)
    src = tmp_path / "ds"
    (src / "nested").mkdir(parents=True)
    (src / "train.csv").write_text("1,2,3\n")
    (src / "nested" / "w.bin").write_bytes(b"\x00\x01")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/ds": {"name": "bk-upload-gcs", "source": str(src),
                                                              "store": "gcs", "mode": "COPY",
                                                              "persistent": False}},
                   run="cat ~/ds/train.csv; wc -c < ~/ds/nested/w.bin")
    r = broker("launch", "-y", "-c", "up", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["1,2,3", "2"], r.stdout
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    assert sorted(b.name for b in client.list_blobs("bk-upload-gcs")) == ["nested/w.bin", "train.csv"]
    ls = json.loads(broker("storage", "ls", "--json").stdout)
    assert [(s["name"], s["store"], s["persistent"], s["managed"], s["clusters"]) for s in ls] == \
        [("bk-upload-gcs", "gs", False, True, ["up"])]
    r = broker("down", "-y", "up")
    assert r.returncode == 0, r.stderr
    assert client.lookup_bucket("bk-upload-gcs") is None
    assert json.loads(broker("storage", "ls", "--json").stdout) == []


def test_azure_container_copied_and_persistent_storage_kept_until_deleted(azurite, monkeypatch, tmp_path):
    for k, v in azurite.env().items():
        monkeypatch.setenv(k, v)
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    svc.create_container("given")
    svc.get_container_client("given").upload_blob("p/readme.txt", b"from azure")
    src = tmp_path / "model"
    src.mkdir()
    (src / "cfg.json").write_text('{"lr": 1}')
    t = write_task(tmp_path / "t.yaml", file_mounts={
        "~/given": "https://devstoreaccount1.blob.core.windows.net/given/p",
        "~/model": {"name": "bk-keep-az", "source": str(src), "store": "azure", "mode": "COPY"}},
        run="cat ~/given/readme.txt; echo; cat ~/model/cfg.json")
    r = broker("launch", "-y", "-c", "az", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["from azure", '{"lr": 1}'], r.stdout
    assert broker("down", "-y", "az").returncode == 0
    keep = svc.get_container_client("bk-keep-az")
    assert [b.name for b in keep.list_blobs()] == ["cfg.json"]  # persistent (the default): kept
    ls = json.loads(broker("storage", "ls", "--json").stdout)
    assert [(s["name"], s["clusters"]) for s in ls] == [("bk-keep-az", [])]
    r = broker("storage", "delete", "-y", "bk-keep-az")
    assert r.returncode == 0 and "deleted" in r.stderr, r.stderr
    assert not keep.exists()
    r = broker("launch", "-y", "-c", "az2", t, cwd=tmp_path)  # created again; then removed behind our back
    assert r.returncode == 0 and broker("down", "-y", "az2").returncode == 0
    keep.delete_container()
    assert [s["name"] for s in json.loads(broker("storage", "ls", "--json").stdout)] == ["bk-keep-az"]
    r = broker("storage", "ls", "--refresh", "--json")
    assert json.loads(r.stdout) == [] and "no longer exists" in r.stderr, r.stderr
    assert svc.get_container_client("given").exists()  # never recorded, never touched


def test_storage_delete_refuses_a_bucket_a_live_cluster_uses_and_says_when_it_is_gone(s3, tmp_path):
    """`broker storage delete` of a storage a live cluster uses warned, then deleted the bucket with its
    objects under the cluster (a MOUNT loses its data); it is refused now, like `broker volumes delete`. A
    bucket skybroker created that was deleted outside was reported as "not created by skybroker"."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/d": {"name": "busy-bkt", "source": str(src), "mode": "COPY"}},
                   run="true")
    assert broker("launch", "-y", "-c", "busy", t, cwd=tmp_path).returncode == 0
    for args in (("busy-bkt",), ("--all",)):
        r = broker("storage", "delete", "-y", *args)
        assert r.returncode == 2 and "in use by live clusters: storage busy-bkt by busy" in r.stderr, r.stderr
        assert "broker down busy" in r.stderr and _exists(s3, "busy-bkt")
    assert broker("down", "-y", "busy").returncode == 0
    s3.delete_object(Bucket="busy-bkt", Key="f.txt")
    s3.delete_bucket(Bucket="busy-bkt")  # deleted outside skybroker
    r = broker("storage", "delete", "-y", "busy-bkt")
    assert r.returncode == 0 and "busy-bkt no longer exists" in r.stderr + r.stdout, r.stderr
    assert "not created by skybroker" not in r.stderr + r.stdout
    assert json.loads(broker("storage", "ls", "--json").stdout) == []


def test_bucket_skybroker_did_not_create_survives_down_and_delete(s3, tmp_path):
    s3.create_bucket(Bucket="team-data")
    s3.put_object(Bucket="team-data", Key="old.txt", Body=b"old")
    src = tmp_path / "new"
    src.mkdir()
    (src / "new.txt").write_text("new")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/d": {"name": "team-data", "source": str(src), "mode": "COPY",
                                                             "persistent": False}},
                   run="ls ~/d | paste -sd, -")
    r = broker("launch", "-y", "-c", "ext", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["new.txt,old.txt"], r.stdout
    assert broker("down", "-y", "ext").returncode == 0
    assert _keys(s3, "team-data") == ["new.txt", "old.txt"]  # existed before: never deleted


def _fuse_ok() -> str | None:
    if os.geteuid() != 0:
        return "FUSE mounts on the local cloud need root here"
    if not os.path.exists("/dev/fuse") or shutil.which("rclone") is None or shutil.which("fusermount3") is None:
        return "needs /dev/fuse, rclone and fusermount3 (apt-get install rclone fuse3)"
    return None


@pytest.mark.parametrize("mode", ["MOUNT", "MOUNT_CACHED"])
def test_mount_reads_the_bucket_and_writes_go_back(s3, tmp_path, mode):
    why = _fuse_ok()
    if why:
        pytest.skip(why)
    bucket = f"mnt-{mode.lower().replace('_', '-')}"
    src = tmp_path / "in"
    src.mkdir()
    (src / "input.txt").write_text("read me")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/mnt": {"name": bucket, "source": str(src), "mode": mode,
                                                               "persistent": False}},
                   run="cat ~/mnt/input.txt; echo; mkdir -p ~/mnt/out && echo written > ~/mnt/out/result.txt; "
                       "mountpoint -q ~/mnt && echo mounted")
    r = broker("launch", "-y", "-c", "mnt", t, cwd=tmp_path, env={"BROKER_STORAGE_WRITE_BACK": "1"})
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["read me", "mounted"], r.stdout
    deadline = time.monotonic() + 20  # rclone uploads a closed file in the background (write-back)
    while "out/result.txt" not in _keys(s3, bucket) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _keys(s3, bucket) == ["input.txt", "out/result.txt"]
    body = s3.get_object(Bucket=bucket, Key="out/result.txt")["Body"].read()
    assert body == b"written\n"
    procs = [(c, e) for c, e in map(_proc, Path("/proc").iterdir())
             if c and c.split(b"\0")[0].endswith(b"rclone") and b"\0mount\0" in c
             and str(node_dir("mnt", 0)).encode() in c]
    assert procs, "no rclone process for the mount"
    cmdline, environ = procs[0]
    token = dict(v.split(b"=", 1) for v in environ.split(b"\0") if b"=" in v)
    key = token[b"RCLONE_S3_ACCESS_KEY_ID"]  # the federation token, in the environment only
    assert key != b"testing" and key not in cmdline and token[b"RCLONE_S3_SESSION_TOKEN"] not in cmdline
    assert broker("down", "-y", "mnt").returncode == 0
    assert not _exists(s3, bucket)  # persistent: false


def test_a_mount_path_that_is_a_file_on_the_node_is_named(s3, tmp_path):
    """A MOUNT over a path that is a file on the node "succeeded": rclone mounted over the file and the job
    then failed with 'Input/output error'. COPY there failed with a bare '[Errno 17] File exists' (exit 1).
    Both now name the field and the path (exit 2) and tear the new cluster down."""
    why = _fuse_ok()
    if why:
        pytest.skip(why)
    s3.create_bucket(Bucket="onto-file")
    s3.put_object(Bucket="onto-file", Key="a.txt", Body=b"x")
    taken = tmp_path / "taken.txt"  # an absolute path: on the local cloud, this machine's (README)
    taken.write_text("mine\n")
    for mode, words in (("MOUNT", "exists on node 0 and is not a directory"), ("COPY", "failed: File exists")):
        t = write_task(tmp_path / "t.yaml", file_mounts={str(taken): {"source": "s3://onto-file", "mode": mode}},
                       run="echo ran")
        r = broker("launch", "-y", "-c", "onto", t, cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"file_mounts.{taken}: " in r.stderr and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "ran" not in r.stdout and not (broker_home() / "local" / "onto").exists()
        assert taken.read_text() == "mine\n"


def _proc(p: Path):
    try:
        return (p / "cmdline").read_bytes(), (p / "environ").read_bytes()
    except OSError:
        return None, None


def test_missing_credentials_and_bad_names_name_the_field(moto, tmp_path):
    t = write_task(tmp_path / "t.yaml", file_mounts={"/data": "s3://some-bucket/x"}, run="true")
    r = broker("launch", "-y", "-c", "nocred", t, cwd=tmp_path)
    assert r.returncode != 0
    assert "file_mounts./data: no AWS credentials found" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not cluster_dir("nocred").exists()  # refused before anything was created
    bad = write_task(tmp_path / "b.yaml", file_mounts={"/data": {"name": "Bad_Name", "store": "s3"}}, run="true")
    r = broker("launch", "-y", "--dryrun", bad, cwd=tmp_path)
    assert r.returncode == 2 and "file_mounts./data.name" in r.stderr and "not a valid name" in r.stderr, r.stderr
    # no `store`: the chosen cloud's store decides, checked once the plan chose it, before anything is created
    # there (it was found at the sync stage, after provisioning)
    short = write_task(tmp_path / "s.yaml", file_mounts={"~/d": {"name": "x", "mode": "COPY"}}, run="echo never")
    r = broker("launch", "-y", "-c", "short", short, cwd=tmp_path)
    assert r.returncode == 2 and "file_mounts.~/d: 'x' is not a valid name for an S3 bucket" in r.stderr, r.stderr
    assert "waiting for 1 node" not in r.stderr and "never" not in r.stdout
    assert not (broker_home() / "local" / "short").exists()


def test_missing_bucket_is_a_clear_error_before_anything_is_created(s3, tmp_path):
    """README: a bucket that does not exist is an error naming the field, before anything is created (exit
    2). It was found only at the sync stage, after the cluster had been provisioned (on a cloud: an instance
    started, billed and torn down)."""
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/d": "s3://no-such-bucket/x"}, run="true")
    r = broker("launch", "-y", "-c", "nob", t, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "file_mounts.~/d: bucket s3://no-such-bucket/x does not exist" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "provisioning" not in r.stderr, r.stderr
    assert not (broker_home() / "local" / "nob").exists()
    assert broker("status", "--json").stdout.strip() == "[]"
    bad = write_task(tmp_path / "b.yaml", file_mounts={"~/d": "https://example.com/file.txt"}, run="true")
    r = broker("launch", "-y", "-c", "nob", bad, cwd=tmp_path)
    assert r.returncode == 2 and "file_mounts.~/d: https:// buckets are not supported" in r.stderr, r.stderr
    assert not (broker_home() / "local" / "nob").exists()


@pytest.mark.slow
def test_managed_job_keeps_its_bucket_across_a_recovery_and_deletes_it_at_the_end(s3, tmp_path, monkeypatch):
    from tests.integration.test_managed_jobs import (
        TERMINAL,
        controller_pid,
        events,
        launch_detached,
        preempt_local,
        until,
        wait_status,
    )

    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "1")
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.txt").write_text("x")
    seen = tmp_path / "seen"
    t = write_task(tmp_path / "t.yaml", name="bk-job",
                   resources={"infra": "local", "job_recovery": "FAILOVER"},
                   file_mounts={"~/in": {"name": "job-scratch", "source": str(src), "mode": "COPY",
                                         "persistent": False}},
                   run=f'ls ~/in | paste -sd, - >> {seen}.ls; if [ -e {seen} ]; then exit 0; fi; touch {seen}; sleep 60')
    jid = launch_detached(t)
    try:
        wait_status(jid, "RUNNING")
        until(lambda: seen.exists(), 20, "first segment running", jid)
        s3.put_object(Bucket="job-scratch", Key="marker.txt", Body=b"m")  # survives only if the bucket does
        preempt_local(jid)
        j = wait_status(jid, TERMINAL, 60)
        assert j.status == "SUCCEEDED" and j.recoveries == 1, (j.status, events(jid))
        assert Path(f"{seen}.ls").read_text().splitlines() == ["x.txt", "marker.txt,x.txt"]  # kept across recovery
        until(lambda: not _exists(s3, "job-scratch"), 10, "the job's bucket deleted at its end", jid)
        kinds = [e["kind"] for e in events(jid)]
        assert "warning" not in kinds, events(jid)
    finally:
        pid = controller_pid()
        if pid:
            os.kill(pid, 9)


def test_azure_mount_gets_a_sas_for_its_container_only(azurite, monkeypatch, tmp_path):
    why = _fuse_ok()
    if why:
        pytest.skip(why)
    for k, v in azurite.env().items():
        monkeypatch.setenv(k, v)
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    svc.create_container("az-mnt")
    svc.get_container_client("az-mnt").upload_blob("p/in.txt", b"blob in")
    svc.create_container("az-other")
    t = write_task(tmp_path / "t.yaml", file_mounts={
        "~/m": {"source": "https://devstoreaccount1.blob.core.windows.net/az-mnt/p", "mode": "MOUNT"}},
        run="cat ~/m/in.txt; echo; echo out > ~/m/out.txt; echo done")
    r = broker("launch", "-y", "-c", "azm", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["blob in", "done"], r.stdout
    c = svc.get_container_client("az-mnt")
    deadline = time.monotonic() + 20
    while "p/out.txt" not in {b.name for b in c.list_blobs()} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert c.download_blob("p/out.txt").readall() == b"out\n"
    procs = [(cl, e) for cl, e in map(_proc, Path("/proc").iterdir())
             if cl and cl.split(b"\0")[0].endswith(b"rclone") and str(node_dir("azm", 0)).encode() in cl]
    assert procs
    env = dict(v.split(b"=", 1) for v in procs[0][1].split(b"\0") if b"=" in v)
    sas = env[b"RCLONE_AZUREBLOB_SAS_URL"].decode()
    assert "/az-mnt?" in sas and b"AZURE_STORAGE_CONNECTION_STRING" not in env
    assert not any(b"AccountKey" in v for v in env.values())  # the account key never reaches the node
    import subprocess

    lsf = [shutil.which("rclone"), "lsf", "--retries", "1", "--low-level-retries", "1"]
    ok = subprocess.run(lsf + [":azureblob:az-mnt/p"], env={"RCLONE_AZUREBLOB_SAS_URL": sas, "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=30, check=False)
    assert ok.returncode == 0 and "in.txt" in ok.stdout, ok.stderr
    other = subprocess.run(lsf + [":azureblob:az-other"], env={"RCLONE_AZUREBLOB_SAS_URL": sas, "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=30, check=False)
    assert other.returncode != 0  # Azurite checks the SAS: another container is refused
    assert broker("down", "-y", "azm").returncode == 0
    assert c.exists()  # given by URI: never deleted


def test_r2_bucket_is_copied_and_its_mount_needs_the_forward_opt_in(moto, s3, tmp_path, monkeypatch):
    home = Path(os.environ["HOME"]) / ".cloudflare"
    home.mkdir(parents=True)
    (home / "r2.credentials").write_text("[r2]\naws_access_key_id = r2key\naws_secret_access_key = r2secret\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)  # R2 uses its own keys, not the AWS ones
    monkeypatch.setenv("BROKER_R2_ENDPOINT", moto.url)  # R2 speaks S3: moto stands in for it
    s3.create_bucket(Bucket="r2-data")
    s3.put_object(Bucket="r2-data", Key="d/f.txt", Body=b"from r2")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/d": "r2://r2-data/d"}, run="cat ~/d/f.txt")
    r = broker("launch", "-y", "-c", "r2", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout)[0] == ["from r2"], r.stdout
    m = write_task(tmp_path / "m.yaml", file_mounts={"~/d": {"source": "r2://r2-data/d", "mode": "MOUNT"}}, run="true")
    r = broker("launch", "-y", "-c", "r2m", m, cwd=tmp_path)
    assert r.returncode != 0
    assert "file_mounts.~/d: R2 has no scoped temporary credentials" in r.stderr, r.stderr
    assert "BROKER_STORAGE_FORWARD_CREDENTIALS=1" in r.stderr and "r2secret" not in r.stderr + r.stdout
    assert not cluster_dir("r2m").exists()  # refused before anything was created


def test_no_azure_credential_is_one_clear_error_not_the_sdk_log(tmp_path):
    """An az:// bucket with an account named but no credential (no connection string, no `az login`): the
    storage client retried the failed credential lookup like a network error (4 lookups, about 90 s), and
    azure-identity logged ~15 lines per lookup on stderr; the hint said "check that your credentials may use
    this container". Now one lookup, one error (the broker's 60 s timeout below would expire otherwise)."""
    pytest.importorskip("azure.storage.blob")
    pytest.importorskip("azure.identity")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/a": "az://myacct/cont/x"}, run="echo never")
    r = broker("launch", "-y", "-c", "noaz", t, cwd=tmp_path, env={"AZURE_STORAGE_ACCOUNT": "myacct"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "file_mounts.~/a: no Azure credential could be obtained for storage account myacct" in r.stderr, r.stderr
    assert "az login" in r.stderr and "DefaultAzureCredential" not in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) <= 3, r.stderr
    assert not (broker_home() / "local" / "noaz").exists()


def test_unreachable_store_is_named_not_a_traceback(tmp_path, monkeypatch):
    from tests.infra.moto_server import FAKE_CREDENTIALS
    from tests.infra.storage_emulators import free_port

    for k, v in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("BROKER_AWS_MAX_ATTEMPTS", "1")
    t = write_task(tmp_path / "t.yaml", file_mounts={"~/d": "s3://some-bucket/x"}, run="echo never")
    r = broker("launch", "-y", "-c", "down", t, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "file_mounts.~/d: the store failed: EndpointConnectionError" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "never" not in r.stdout
    assert not cluster_dir("down").exists()


@pytest.mark.slow
def test_managed_job_checkpoint_dir_in_a_mounted_bucket(s3, tmp_path, monkeypatch):
    why = _fuse_ok()
    if why:
        pytest.skip(why)
    from skybroker.jobs import checkpoint, store
    from tests.integration.test_managed_jobs import (TERMINAL, controller_pid, events, launch_detached,
                                                     preempt_local, until, wait_status)

    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "0.3")
    monkeypatch.setenv("BROKER_STORAGE_WRITE_BACK", "1")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "1")
    led = tmp_path / "ledger"
    t = write_task(tmp_path / "t.yaml", name="ck", envs={"BROKER_CHECKPOINT_DIR": "~/ckpt"},
                   resources={"infra": "local", "job_recovery": "FAILOVER"},
                   file_mounts={"~/ckpt": {"name": "ckpt-bkt", "mode": "MOUNT", "persistent": False}},
                   run=(f'd=$(eval echo "$BROKER_CHECKPOINT_DIR"); i=$(cat "$d/step" 2>/dev/null || echo 0)\n'
                        f'echo "start $i" >> {led}\n'
                        f'[ "$i" -gt 0 ] && exit 0\n'
                        f'echo 5 > "$d/step.tmp" && mv "$d/step.tmp" "$d/step"; sleep 60\n'))
    jid = launch_detached(t)
    try:
        wait_status(jid, "RUNNING")
        until(lambda: "step" in _keys(s3, "ckpt-bkt"), 30, "the checkpoint written to the bucket", jid)
        preempt_local(jid)
        j = wait_status(jid, TERMINAL, 60)
        assert j.status == "SUCCEEDED" and j.recoveries == 1, (j.status, events(jid))
        assert led.read_text().splitlines() == ["start 0", "start 5"]  # resumed from the bucket
        assert checkpoint.current(store.job_dir(jid)) is None  # nothing copied back by the controller
        until(lambda: not _exists(s3, "ckpt-bkt"), 10, "the job's bucket deleted at its end", jid)
    finally:
        pid = controller_pid()
        if pid:
            os.kill(pid, 9)
