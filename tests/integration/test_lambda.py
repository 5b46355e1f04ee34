"""Lambda Cloud: the driver against a local fake of its REST API (tests/infra/lambda_fake.py), the
catalog, credentials, failover across its regions and to another cloud, and (as root) launch → run →
logs → down and a managed job that survives its instance being terminated, on real sshd nodes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from skybroker import api, catalog, provision, state
from skybroker.clouds.base import TAG_CLUSTER, ProvisionRequest
from skybroker.errors import CapacityError, CredentialsError, InvalidRequestError, NoFeasibleError, QuotaError, Scope
from skybroker.spec import task_from_dict
from tests.infra.lambda_fake import LambdaFake

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIlambdatestkey test@lambda"


@pytest.fixture
def fake(monkeypatch):
    from skybroker.clouds import registry

    f = LambdaFake().start()
    for k, v in f.env().items():
        monkeypatch.setenv(k, v)
    registry._instances.clear()
    yield f
    f.close()
    registry._instances.clear()


@pytest.fixture
def cloud(fake):
    from skybroker.clouds.lambda_cloud import LambdaCloud

    return LambdaCloud()


def req(cluster="lc", n=1, region="us-east-1", itype="gpu_1x_a100", **kw):
    kw.setdefault("public_key", PUB)
    return ProvisionRequest(cluster, region, None, itype, n, accelerator="A100", accelerator_count=1, **kw)


def launches(fake) -> list[dict]:
    return [b for m, p, b in fake.requests if (m, p) == ("POST", "/api/v1/instance-operations/launch")]


# -- credentials ----------------------------------------------------------------------------------------
def test_check_reads_env_then_keys_file_and_never_prints_the_key(monkeypatch, tmp_path):
    from skybroker.clouds.lambda_cloud import LambdaCloud

    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    c = LambdaCloud().check()
    assert not c.ok and c.credentials is False and "LAMBDA_API_KEY" in c.hint
    keys = Path(os.environ["HOME"]) / ".lambda_cloud" / "lambda_keys"
    keys.parent.mkdir()
    keys.write_text("# Lambda Cloud\napi_key = s3cr3t-from-file\n")
    c = LambdaCloud().check()
    assert c.ok and str(keys) in c.detail and "s3cr3t" not in c.detail
    monkeypatch.setenv("LAMBDA_API_KEY", "s3cr3t-from-env")
    c = LambdaCloud().check()
    assert c.ok and "LAMBDA_API_KEY" in c.detail and "s3cr3t" not in repr(c)
    keys.write_text("nothing here\n")
    monkeypatch.delenv("LAMBDA_API_KEY")
    assert not LambdaCloud().check().ok


def test_a_call_without_credentials_is_a_cloud_scoped_error(monkeypatch):
    from skybroker.clouds.lambda_cloud import LambdaCloud

    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    with pytest.raises(CredentialsError) as ei:
        LambdaCloud().query("x", None)
    assert ei.value.scope == Scope.CLOUD and ei.value.code == "NoApiKey"


# -- catalog and plans ----------------------------------------------------------------------------------
def test_catalog_is_on_demand_only_without_zones():
    specs = catalog.specs("lambda")
    assert len(specs) == 25 and len(catalog.regions("lambda")) == 17 and catalog.zones("lambda") == {}
    assert all(s.min_spot_price is None for s in specs)
    h100 = [s for s in specs if s.accelerator_name == "H100" and s.accelerator_count == 8]
    assert min(s.min_price for s in h100) == 31.92
    assert min(s.min_price for s in specs if s.accelerator_name == "A100" and s.accelerator_count == 1) == 1.99
    assert {s.arch for s in specs if s.accelerator_name == "GH200"} == {"arm64"}
    assert catalog.info()["clouds"]["lambda"]["counts"]["input_rows"] == 425


def test_plan_names_lambda_and_has_no_spot():
    task = task_from_dict({"resources": {"infra": "lambda", "accelerators": "H100:8"}, "run": "true"})
    plan = api.plan(task)
    assert (plan.chosen.cloud, plan.chosen.instance_type, plan.chosen.price) == ("lambda", "gpu_8x_h100_sxm5", 31.92)
    assert plan.chosen.zone is None
    spot = task_from_dict({"resources": {"infra": "lambda", "accelerators": "H100:8", "use_spot": True}, "run": "x"})
    with pytest.raises(NoFeasibleError) as ei:
        api.plan(spot)
    assert "would fit" in (ei.value.hint or "")  # elsewhere, or on-demand
    both = task_from_dict({"resources": {"accelerators": "A100:1"}, "run": "true"})
    plan = api.plan(both, clouds=("aws", "gcp", "azure", "lambda"))
    assert plan.chosen.cloud == "lambda" and {c.cloud for c in plan.candidates} >= {"lambda", "gcp"}


def test_aliases_resolve():
    from skybroker.resources import parse_infra

    assert parse_infra("lambda/us-east-1", "infra")[:2] == ("lambda", "us-east-1")
    assert parse_infra("lambdalabs", "infra")[0] == "lambda"


# -- the driver against the fake -----------------------------------------------------------------------
def test_provision_is_idempotent_named_and_keyed_once(cloud, fake):
    first = cloud.provision(req(n=2))
    again = cloud.provision(req(n=2))
    assert [i.instance_id for i in first] == [i.instance_id for i in again]
    assert [i.rank_hint for i in first] == [0, 1] and all(i.tags[TAG_CLUSTER] == "lc" for i in first)
    body = launches(fake)[0]
    assert set(body) == {"region_name", "instance_type_name", "ssh_key_names", "quantity", "name"}
    assert body["quantity"] == 1 and body["name"].startswith("skybroker-lc-") and body["name"].endswith("-0")
    assert len(launches(fake)) == 2 and len(fake.ssh_keys) == 1
    assert fake.ssh_keys[0]["public_key"] == PUB and body["ssh_key_names"] == [fake.ssh_keys[0]["name"]]
    cloud.provision(req("other", 1))
    assert len(fake.ssh_keys) == 1  # the same key is reused by every cluster
    assert [i.state for i in cloud.query("lc", "us-east-1")] == ["running", "running"]


def test_terminate_twice_query_after_is_empty_and_rules_removed(cloud, fake):
    cloud.provision(req(n=1, ports=("8080", "9000-9010")))
    descs = [r["description"] for r in fake.firewall_rules]
    assert descs.count("skybroker cluster lc") == 2  # 22 is covered by Lambda's default rule
    ports = sorted(tuple(r["port_range"]) for r in fake.firewall_rules if r["protocol"] == "tcp")
    assert ports == [(22, 22), (8080, 8080), (9000, 9010)]
    cloud.open_ports("lc", "us-east-1", ("7000",))
    assert (7000, 7000) in [tuple(r["port_range"]) for r in fake.firewall_rules if r["protocol"] == "tcp"]
    cloud.terminate("lc", "us-east-1")
    cloud.terminate("lc", "us-east-1")
    assert cloud.query("lc", "us-east-1") == [] and fake.live() == []
    assert [r["description"] for r in fake.firewall_rules] == ["Allow SSH", "Allow ICMP"]


def test_another_clusters_rule_does_not_count_as_open(cloud, fake):
    cloud.provision(req("a", ports=("8080",)))
    cloud.provision(req("b", ports=("8080",)))
    cloud.terminate("a", "us-east-1")
    assert any(r["description"] == "skybroker cluster b" and r["port_range"] == [8080, 8080]
               for r in fake.firewall_rules)


def test_concurrent_rule_changes_keep_each_others_rules(cloud, fake, monkeypatch):
    """The account's rules are one list, replaced whole: two clusters opening ports at once (two managed
    jobs launching, or a launch beside a down) both read the old list and the second PUT dropped the first's
    rule. The read-modify-write is now under an account lock. The barrier holds each GET until both have
    read (without the lock) or for 1 s (with it, the second cannot read before the first has written)."""
    import threading

    from skybroker.clouds.lambda_cloud import driver

    cloud.provision(req("a"))
    cloud.provision(req("b"))
    gate, real = threading.Barrier(2, timeout=1), driver.api.list_firewall_rules

    def slow_get():
        rules = real()
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            pass
        return rules

    monkeypatch.setattr(driver.api, "list_firewall_rules", slow_get)
    errors = []
    threads = [threading.Thread(target=lambda c=c, p=p: errors.extend(_capture(cloud.open_ports, c, "us-east-1", (p,))))
               for c, p in (("a", "7000"), ("b", "7001"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = {(r["description"], tuple(r["port_range"])) for r in fake.firewall_rules if r["protocol"] == "tcp"}
    assert {("skybroker cluster a", (7000, 7000)), ("skybroker cluster b", (7001, 7001))} <= got, got
    for c in ("a", "b"):
        cloud.terminate(c, "us-east-1")


def _capture(fn, *args) -> list[BaseException]:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        return [exc]
    return []


def test_ssh_rule_added_when_the_user_removed_lambdas_default(cloud, fake):
    fake.firewall_rules = []
    cloud.provision(req())
    assert [(r["port_range"], r["description"]) for r in fake.firewall_rules] == [([22, 22], "skybroker cluster lc")]


def test_image_id_is_an_image_family_or_id(cloud, fake):
    cloud.provision(req("i1", image_id="lambda-stack-22-04"))
    cloud.provision(req("i2", image_id="0123456789abcdef0123456789abcdef"))
    bodies = launches(fake)
    assert bodies[0]["image"] == {"family": "lambda-stack-22-04"}
    assert bodies[1]["image"] == {"id": "0123456789abcdef0123456789abcdef"}


def test_capacity_quota_credentials_and_spot_are_typed(cloud, fake):
    fake.no_capacity("us-east-1", "gpu_1x_a100")
    with pytest.raises(CapacityError) as ei:
        cloud.provision(req())
    assert ei.value.scope == Scope.ZONE and ei.value.code == "instance-operations/launch/insufficient-capacity"
    assert launches(fake) == []  # refused from the instance-types listing: no rate-limited launch spent
    # capacity gone between the listing and the launch: the launch's own 400 is classified the same way
    real = fake.capacity["gpu_1x_a100"]
    fake.capacity["gpu_1x_a100"] = _ListedButFull(real | {"us-east-1"})
    with pytest.raises(CapacityError) as ei:
        cloud.provision(req("race"))
    assert len(launches(fake)) == 1 and ei.value.code == "instance-operations/launch/insufficient-capacity"
    fake.capacity["gpu_1x_a100"] = real
    fake.quota = 0
    with pytest.raises(QuotaError) as ei:
        cloud.provision(req(region="us-west-1"))
    assert ei.value.scope == Scope.CLOUD and ei.value.code == "global/quota-exceeded"  # a per-account quota
    fake.quota = None
    with pytest.raises(InvalidRequestError):
        cloud.provision(req(use_spot=True))
    fake.fail_auth()
    with pytest.raises(CredentialsError) as ei:
        cloud.provision(req(region="us-west-1"))
    assert ei.value.scope == Scope.CLOUD and ei.value.code == "global/invalid-api-key"
    assert fake.api_key not in str(ei.value)
    # the message names the cloud and where the key came from (`down` of one cluster shows only this message)
    assert ei.value.message.startswith("Lambda Cloud refused our API key (API key from environment (LAMBDA_API_KEY))")


class _ListedButFull(set):
    """Listed with capacity by /instance-types, refused by the launch (capacity went meanwhile)."""

    def __contains__(self, item):
        import inspect

        return inspect.stack()[1].function != "_launch" and super().__contains__(item)


def test_launch_rate_limit_is_paced_and_429_retried(cloud, fake, monkeypatch):
    import time

    fake.launch_interval = 0.3
    monkeypatch.setenv("BROKER_LAMBDA_LAUNCH_INTERVAL", "0.3")
    t0 = time.monotonic()
    cloud.provision(req(n=3))
    assert time.monotonic() - t0 >= 0.6 and len(launches(fake)) == 3  # paced: no 429 at all
    monkeypatch.setenv("BROKER_LAMBDA_LAUNCH_INTERVAL", "0")  # not paced: the 429s are retried in place
    cloud.provision(req("b", n=2))
    assert len([i for i in fake.live() if i["name"].startswith("skybroker-b-")]) == 2
    monkeypatch.setenv("BROKER_LAMBDA_RETRIES", "0")
    fake.launch_interval = 30
    from skybroker.errors import ThrottledError

    with pytest.raises(ThrottledError) as ei:
        cloud.provision(req("c"))
    assert ei.value.scope == Scope.RETRY


def test_instance_gone_while_booting_is_capacity(cloud, fake, monkeypatch):
    fake.boot_delay = 5
    ids = cloud.run_instances(req())
    fake.vanish(ids[0])
    with pytest.raises(CapacityError) as ei:
        cloud.wait_instances(req(), ids)
    assert ei.value.code == "TerminatedDuringProvisioning"


def test_list_tagged_for_gc(cloud, fake):
    cloud.provision(req("g1", ports=("8080",)))
    cloud.provision(req("g2", region="us-west-1"))
    fake.requests.clear()
    tagged = cloud.list_tagged(None)
    assert {(t.cluster, t.kind, t.region) for t in tagged} == {
        ("g1", "instance", "us-east-1"), ("g2", "instance", "us-west-1"), ("g1", "firewall-rule", None)}
    assert len([r for r in fake.requests if r[1] == "/api/v1/instances"]) == 1  # one listing for every region
    assert cloud.regions() == [None]


# -- failover -----------------------------------------------------------------------------------------
def _provision(task, clouds, cluster="fo"):
    from skybroker.runtime.keys import ensure_user_key

    _, pub = ensure_user_key(state.db_path().parent)
    return provision.provision(cluster, lambda blocks: api.plan(task, blocks, clouds=clouds), public_key=pub)


def test_failover_from_a_full_region_to_the_next(fake):
    task = task_from_dict({"resources": {"infra": "lambda", "instance_type": "gpu_1x_a100"}, "run": "true"})
    first = api.plan(task).chosen.region
    fake.no_capacity(first)
    cand, infos, attempts = _provision(task, ("lambda",))
    assert [(a.cloud, a.region, a.error) for a in attempts] == [("lambda", first, "CapacityError")]
    assert cand.cloud == "lambda" and cand.region != first and len(infos) == 1
    assert {i["region"]["name"] for i in fake.live()} == {cand.region}


def test_failover_from_lambda_to_another_cloud(fake, monkeypatch):
    pytest.importorskip("google.cloud.compute_v1")
    from skybroker.clouds.gcp import client as gcp_client
    from tests.infra.gce_fake import GCEFake

    gce = GCEFake(project="test-project").start()
    try:
        for k, v in gce.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("BROKER_GCP_POLL", "0.01")
        gcp_client.reset()
        for region in catalog.regions("lambda"):
            fake.no_capacity(region, "gpu_1x_a100")
            fake.no_capacity(region, "gpu_1x_a100_sxm4")
        task = task_from_dict({"resources": {"accelerators": "A100:1"}, "run": "true"})
        assert api.plan(task, clouds=("lambda", "gcp")).chosen.cloud == "lambda"
        cand, infos, attempts = _provision(task, ("lambda", "gcp"))
        assert cand.cloud == "gcp" and len(infos) == 1
        assert {a.cloud for a in attempts} == {"lambda"} and len(attempts) == 17  # a region is blocked for every type
        assert all(a.error == "CapacityError" for a in attempts)
        assert launches(fake) == [] and fake.live() == []
    finally:
        gce.close()
        gcp_client.reset()


def test_quota_blocks_every_lambda_region_at_once(fake, monkeypatch):
    pytest.importorskip("google.cloud.compute_v1")
    from skybroker.clouds.gcp import client as gcp_client
    from tests.infra.gce_fake import GCEFake

    gce = GCEFake(project="test-project").start()
    try:
        for k, v in gce.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("BROKER_GCP_POLL", "0.01")
        gcp_client.reset()
        fake.quota = 0
        task = task_from_dict({"resources": {"accelerators": "A100:1"}, "run": "true"})
        cand, _, attempts = _provision(task, ("lambda", "gcp"))
        assert cand.cloud == "gcp" and [(a.cloud, a.error, a.scope) for a in attempts] == [
            ("lambda", "AccountQuotaError", "cloud")]
    finally:
        gce.close()
        gcp_client.reset()


# -- end to end on real sshd nodes (root) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ubuntu_pool():
    """sshd nodes whose login user is `ubuntu`, as on Lambda's image."""
    from tests.infra.netns import NodePool, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(f"sshd test nodes unavailable: {why}")
    pool = NodePool(Path("/var/tmp") / f"skybroker-lambda-{os.getpid()}", user="ubuntu")
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def sshd_fake(ubuntu_pool, monkeypatch):
    from skybroker.clouds import registry

    f = LambdaFake(node_pool=ubuntu_pool).start()
    for k, v in f.env().items():
        monkeypatch.setenv(k, v)
    registry._instances.clear()
    yield f
    f.close()
    registry._instances.clear()


def test_launch_exec_logs_down_on_sshd_nodes(sshd_fake, ubuntu_pool):
    task = task_from_dict({"name": "lam", "num_nodes": 2,
                           "resources": {"infra": "lambda/us-west-1", "accelerators": "A10:1", "ports": 8888},
                           "run": 'echo "rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES ips $(echo $SKYPILOT_NODE_IPS)"'})
    lines = []
    result = api.launch(task, cluster="lam", plan=api.plan(task), on_line=lambda r, l: lines.append((r, l)))
    assert result.status is not None and result.status.exit_code == 0, result
    ips = [i["ip"] for i in sorted(sshd_fake.live(), key=lambda i: i["name"])]
    assert sorted(lines) == [(r, f"rank {r} of 2 ips {ips[0]} {ips[1]}") for r in (0, 1)]
    assert set(ips) <= {n.ip for n in ubuntu_pool.nodes}
    out = []
    res = api.exec_("lam", api.exec_task(["echo", "again-$SKYPILOT_NODE_RANK"]), on_line=lambda r, l: out.append((r, l)))
    assert res.status.exit_code == 0 and sorted(out) == [(0, "again-0"), (1, "again-1")]
    logs = []
    api.logs("lam", 1, follow=False, on_line=lambda r, l: logs.append(l))
    assert any("rank 0 of 2" in line for line in logs)
    recs = api.status(refresh=True)
    assert [(r.name, r.cloud, r.region, r.status) for r in recs] == [("lam", "lambda", "us-west-1", "UP")]
    api.down(["lam"])
    assert sshd_fake.live() == [] and not set(ips) & {n.ip for n in ubuntu_pool.nodes}
    assert all(not r["description"].startswith("skybroker") for r in sshd_fake.firewall_rules)


def test_managed_job_survives_its_instance_being_terminated(sshd_fake, tmp_path, monkeypatch):
    from tests.integration import test_managed_jobs as M
    from tests.integration.local_helpers import wait_for, write_task

    monkeypatch.setenv("BROKER_CONTROLLER_SSH_TIMEOUT", "2")
    task = write_task(tmp_path / "t.yaml", name="lamjob",
                      resources={"infra": "lambda", "instance_type": "gpu_1x_a10", "job_recovery": "FAILOVER"},
                      run=M.COUNTER_RUN.replace("{n}", "25").replace('>> "$LEDGER"', ">/dev/null"))
    jid = M._submit_inprocess(task)
    ctl, t = M._inprocess_controller(monkeypatch)
    t.start()
    try:
        M.wait_status(jid, "RUNNING", 90)
        wait_for(lambda: M.synced_counter(jid) >= 3, 30, 0.05, "checkpoint synced")
        before = M.synced_counter(jid)
        [victim] = sshd_fake.live()
        t_kill = __import__("time").time()
        sshd_fake.vanish(victim["id"])
        j = M.wait_status(jid, M.TERMINAL, 120)
        assert j.status == "SUCCEEDED", (j.status, j.failure, M.events(jid))
        assert j.recoveries == 1
        rec = [e for e in M.events(jid) if e["kind"] == "recovery"]
        assert rec and "lost" in rec[0]["message"], rec
        print(f"lambda: preemption → recovery decided in {rec[0]['ts'] - t_kill:.1f}s")
    finally:
        t.join(30)
        ctl.pool.shutdown(wait=True)
    log = (M.broker_home() / "managed" / str(jid) / "run.log").read_text()
    starts = [int(x) for x in __import__("re").findall(r"^start at (\d+)$", log, __import__("re").MULTILINE)]
    assert starts[0] == 0 and starts[-1] >= before and "final 25" in log
    assert sshd_fake.live() == []


def test_gc_finds_and_removes_an_orphan(cloud, fake):
    from skybroker import gc

    from skybroker import state

    # created with this home's name on the cloud, never recorded in the state
    cloud.provision(req(state.cloud_name_for("orphan"), ports=("8080",)))
    scan = gc.scan(clouds=("lambda",))
    assert sorted((o.cluster, o.region or "") for o in scan.orphans) == [("orphan", ""), ("orphan", "us-east-1")]
    assert scan.scanned == {"lambda": 1} and scan.skipped == []
    gc.remove(scan.orphans)
    assert fake.live() == [] and all(not r["description"].startswith("skybroker") for r in fake.firewall_rules)


def test_a_launch_refused_credentials_everywhere_leaves_no_record(fake, tmp_path):
    """Every call answers 401 global/invalid-api-key: nothing was launched, so no INTERRUPTED record is left
    that only a working API key could remove (`down` failed with exit 4)."""
    from tests.integration.refused_launch import assert_refused_launch_leaves_no_record

    fake.fail_auth()
    assert_refused_launch_leaves_no_record(
        tmp_path, "resources:\n  infra: lambda/us-east-1\n  instance_type: gpu_1x_a100\nrun: echo hi\n",
        "lambda/us-east-1")
    fake.fail_auth(False)
    assert fake.live() == [] and launches(fake) == []


@pytest.mark.parametrize("lost", ["502", "timeout"])
def test_a_launch_whose_answer_was_lost_keeps_its_record_when_the_cloud_cannot_be_asked(fake, monkeypatch, lost):
    """The opposite case: the launch was carried out but its answer lost (a 502 from a proxy, a timeout),
    then every call refuses the API key: the instance may exist, so the intent stays open for `broker down`
    (a leaked live instance with no record is worse than a stale record)."""
    from skybroker.clouds.lambda_cloud import client as lc

    real = lc.launch

    def launch_then_lose_the_answer(body):
        real(body)
        fake.fail_auth()
        if lost == "502":
            raise lc.LambdaApiError(502, None, "Bad Gateway")
        raise lc.LambdaUnreachable("cannot reach the endpoint: timed out")

    monkeypatch.setattr(lc, "launch", launch_then_lose_the_answer)
    task = task_from_dict({"resources": {"infra": "lambda/us-east-1", "instance_type": "gpu_1x_a100"}, "run": "true"})
    with pytest.raises(provision.ProvisionExhausted):
        _provision(task, ("lambda",), cluster="lost")
    assert [i["cloud"] for i in state.open_intents("lost")] == ["lambda"]
    fake.fail_auth(False)
    assert len(fake.live()) == 1


def test_ctrl_c_while_a_launch_waits_its_turn_launches_nothing_more(fake, monkeypatch):
    """A 2-node launch waits BROKER_LAMBDA_LAUNCH_INTERVAL between its launch calls. Ctrl-C in that wait used to
    let the wait run out and then launch the second instance anyway (the 'call in flight' was the pacing sleep),
    only for the rollback to terminate it: an instance billed for nothing. Now the wait ends at the interrupt:
    one launch, rolled back, nothing left."""
    import _thread
    import threading
    import time

    monkeypatch.setenv("BROKER_LAMBDA_LAUNCH_INTERVAL", "20")

    def interrupt_after_the_first_launch():
        while not launches(fake):
            time.sleep(0.05)
        time.sleep(0.5)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_after_the_first_launch, daemon=True).start()
    task = task_from_dict({"num_nodes": 2, "resources": {"infra": "lambda/us-east-1", "instance_type": "gpu_1x_a100"},
                           "run": "true"})
    with pytest.raises(KeyboardInterrupt):
        _provision(task, ("lambda",), cluster="paced")
    assert len(launches(fake)) == 1
    assert fake.live() == []  # the one launched was rolled back


def test_a_cluster_is_found_whatever_user_launched_it(cloud, fake, monkeypatch):
    """Instance names carry a hash of $USER. A cluster launched as one $USER and torn down as another (`sudo -E`,
    cron, a container without USER) used to be invisible: `down` said terminated, the state forgot it, the GPU
    instance kept running and `broker gc` could not see it. A name with this home's suffix is this home's
    whatever the user; an unsuffixed name (from before home suffixes) still needs the same $USER."""
    from skybroker import gc

    name = state.cloud_name_for("who")
    monkeypatch.setenv("USER", "alice")
    cloud.provision(req(name))
    cloud.provision(req("legacy"))  # no home suffix: two users of one account may both have one
    monkeypatch.setenv("USER", "bob")
    assert [i.instance_id for i in cloud.query(name, "us-east-1")] == [i["id"] for i in fake.live()
                                                                        if i["name"].startswith(f"skybroker-{name}-")]
    assert cloud.query("legacy", "us-east-1") == []
    assert [t.cluster for t in cloud.list_tagged(None) if t.kind == "instance"] == [name]
    assert {o.cluster for o in gc.scan(clouds=("lambda",)).orphans} == {"who"}  # not in the state: gc sees it
    cloud.terminate(name, "us-east-1")
    assert [i["name"] for i in fake.live()] == [f"skybroker-legacy-{lc_hash('alice')}-0"]
    monkeypatch.setenv("USER", "alice")
    cloud.terminate("legacy", "us-east-1")
    assert fake.live() == []


def lc_hash(user: str) -> str:
    import hashlib

    return hashlib.sha256(user.encode()).hexdigest()[:4]
