"""Bucket file_mounts as SkyPilot writes them: URI forms, the storage mapping, modes, and the errors
(each naming its field). Pure: no SDK, no network."""
from __future__ import annotations

import json

import pytest

from skybroker.errors import SpecError
from skybroker.spec import task_from_dict
from skybroker.storage.base import BucketRef, StorageError, check_name, parse_uri
from skybroker.storage.s3 import bucket_policy


def mounts(fm, tmp_path=None):
    return task_from_dict({"run": "true", "file_mounts": fm}, source="t.yaml").file_mounts


@pytest.mark.parametrize("uri,ref", [
    ("s3://bkt/a/b", BucketRef("s3", "bkt", "a/b")),
    ("gs://my_bucket", BucketRef("gs", "my_bucket", "")),
    ("gcs://my-bucket/x/", BucketRef("gs", "my-bucket", "x")),
    ("r2://data/set", BucketRef("r2", "data", "set")),
    ("az://acct1/cont/p/q", BucketRef("az", "cont", "p/q", "acct1")),
    ("https://azureopendatastorage.blob.core.windows.net/nyctlc/yellow",
     BucketRef("az", "nyctlc", "yellow", "azureopendatastorage")),
])
def test_uri_forms(uri, ref):
    assert parse_uri(uri) == ref


@pytest.mark.parametrize("uri,words", [
    ("oci://b/x", "oci:// buckets are not supported"),
    ("https://example.com/file.tgz", "https:// buckets are not supported"),
    ("az://onlyaccount", "names the storage account and the container"),
    ("s3://Bad_Bucket", "is not a valid name for an S3 bucket"),
    ("gs://googlestuff", "not a valid name for a GCS bucket"),
    ("az://acct/a--b", "not a valid name for an Azure container"),
])
def test_bad_uris(uri, words):
    with pytest.raises(StorageError) as e:
        parse_uri(uri)
    assert words in e.value.message


def test_names_per_store():
    check_name("gs", "under_score.ok")
    check_name("s3", "dots.and-dashes1")
    for kind, bad in (("s3", "ab"), ("s3", "192.168.1.1"), ("s3", "a..b"), ("s3", "under_score"), ("az", "Upper")):
        with pytest.raises(StorageError):
            check_name(kind, bad)


def test_string_uri_is_copy_and_mapping_defaults_to_mount(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    a, b, c = mounts({"/data": "s3://bkt/pre/", "/ckpt": {"name": "my-ckpt", "store": "gcs"},
                      "/up": {"name": "up-bkt", "source": str(src), "mode": "copy", "persistent": False}})
    assert (a.is_bucket, a.mode, a.source, a.name) == (True, "COPY", "s3://bkt/pre", None)
    assert (b.mode, b.name, b.store, b.source, b.persistent) == ("MOUNT", "my-ckpt", "gs", "gs://my-ckpt", True)
    assert (c.mode, c.store, c.source, c.uploads, c.persistent) == ("COPY", None, "", (str(src),), False)


def test_mount_cached_and_azure_https_source():
    (m,) = mounts({"/d": {"source": "https://acct9.blob.core.windows.net/cont/x", "mode": "MOUNT_CACHED"}})
    assert (m.mode, m.source) == ("MOUNT_CACHED", "https://acct9.blob.core.windows.net/cont/x")


@pytest.mark.parametrize("fm,field,words", [
    ({"/d": "s3://Bad_Name"}, "file_mounts./d", "not a valid name for an S3 bucket"),
    ({"/d": {"name": "UPPER", "store": "s3"}}, "file_mounts./d.name", "not a valid name"),
    ({"/d": {"name": "ok-name", "mode": "SYNC"}}, "file_mounts./d.mode", "unknown storage mode"),
    ({"/d": {"name": "ok-name", "store": "ibm"}}, "file_mounts./d.store", "is not supported"),
    ({"/d": {"source": "oci://b/c"}}, "file_mounts./d.source", "oci:// buckets are not supported"),
])
def test_errors_name_the_field(fm, field, words):
    with pytest.raises(SpecError) as e:
        mounts(fm)
    assert e.value.field == field and words in e.value.message, (e.value.field, e.value.message)


@pytest.mark.parametrize("target,field,words", [
    ("", "file_mounts.", "needs a destination path"),
    ("s3://have-bkt", "file_mounts.s3://have-bkt", "not a bucket"),
    ("/", "file_mounts./", "root directory"),
    ("~/sky_workdir", "file_mounts.~/sky_workdir", "where the workdir is synced"),
    ("~/sky_workdir/", "file_mounts.~/sky_workdir/", "where the workdir is synced"),
])
def test_mount_destinations_that_cannot_work_are_refused(tmp_path, target, field, words):
    """They were accepted: '' and a bucket URI as the key landed the data in the node's home (`s3:` made a
    directory there), `/` synced over the node's root (on the local cloud, this machine's), and ~/sky_workdir
    with a workdir mixed a bucket into the workdir or, a file, failed mid-launch with '[Errno 21] Is a
    directory'."""
    wd = tmp_path / "wd"
    wd.mkdir()
    with pytest.raises(SpecError) as e:
        task_from_dict({"workdir": str(wd), "file_mounts": {target: str(wd)}, "run": "x"})
    assert e.value.field == field and words in e.value.message and e.value.exit_code == 2, e.value.message
    # inside the workdir, or the same path with no workdir, is fine
    task_from_dict({"workdir": str(wd), "file_mounts": {"~/sky_workdir/data": str(wd)}, "run": "x"})
    task_from_dict({"file_mounts": {"~/sky_workdir": str(wd)}, "run": "x"})


def test_stored_task_round_trip(tmp_path):
    from skybroker.spec import task_from_stored, task_to_dict

    src = tmp_path / "d"
    src.mkdir()
    t = task_from_dict({"run": "true", "file_mounts": {"/up": {"name": "up-bkt", "source": [str(src)]}}},
                       source="t.yaml")
    back = task_from_stored(json.loads(json.dumps(task_to_dict(t))))
    assert back.file_mounts == t.file_mounts


def test_node_token_policy_names_only_the_bucket():
    pol = bucket_policy("data-1")
    resources = {r for s in pol["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                         else s["Resource"])}
    assert resources == {"arn:aws:s3:::data-1", "arn:aws:s3:::data-1/*"}
    actions = {a for s in pol["Statement"] for a in s["Action"]}
    assert not any(a.endswith("*") for a in actions) and "s3:DeleteBucket" not in actions


def test_mount_script_has_no_credentials():
    from skybroker.spec import FileMount
    from skybroker.storage.mounts import mount_script

    m = FileMount("~/data", "s3://bkt/p", is_bucket=True, mode="MOUNT_CACHED")
    script = mount_script(m, parse_uri("s3://bkt/p"))
    assert ":s3:bkt/p" in script and "--vfs-cache-mode full" in script
    assert "ACCESS_KEY" not in script and "SECRET" not in script


def test_node_messages_are_redacted():
    from skybroker.storage.mounts import redact

    env = {"RCLONE_AZUREBLOB_SAS_URL": "https://a.blob.core.windows.net/c?sv=1&sig=SECRETSIG", "X": "short"}
    out = redact("failed: https://a.blob.core.windows.net/c?sv=1&sig=SECRETSIG and sig=OTHER1234 x", env)
    assert "SECRETSIG" not in out and "OTHER1234" not in out and "<redacted>" in out


def test_a_shared_non_persistent_storage_goes_with_its_last_user():
    from skybroker.storage import mounts, records

    records.save(records.StorageRecord("shared-b", "s3", "s3://shared-b", persistent=False, managed=False,
                                       users=["cluster:a", "cluster:b", "owner:managed:7"]))
    records.save(records.StorageRecord("kept-b", "s3", "s3://kept-b", persistent=True, users=["cluster:a"]))
    assert mounts.release("cluster:a") == []
    assert records.get("shared-b").users == ["cluster:b", "owner:managed:7"]
    assert records.get("kept-b").users == []  # persistent: stays, unused
    mounts.release("cluster:b")
    assert records.get("shared-b") is not None  # the managed job still uses it (its recovery relaunches)
    mounts.release("owner:managed:7")
    assert records.get("shared-b") is None and records.get("kept-b") is not None
