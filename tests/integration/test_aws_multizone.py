"""Multi-zone deadline jobs end to end (issue 17) on "EC2": moto through the real boto3 driver, each
instance a real OpenSSH node in a network namespace (tests/integration/test_aws_autostop.py's fixture),
the controller in this process (ops.IN_PROCESS, as inside `broker server`) so it shares moto with the test.

A deadline job whose resources allow spot in every zone of us-east-1 (no zone named, no `use_spot`: the
deadline policy picks the market) is driven by the multi-zone policy `mz_union` (skybroker/jobs/
deadline.py, skybroker/spot/mz_patient.py), which picks the market *and* the zone. What the policy is
documented to do, and what this test holds it to on real instances:
  - the zone is the cheapest one not refused lately: the first spot launch goes to places[0] (the
    catalog's cheapest spot zone for m5.large in us-east-1);
  - after a loss, "each tried in turn": the zone that preempted is left, the next cheapest is tried;
    a zone whose spot launch is refused (InsufficientInstanceCapacity, injected on RunInstances the
    way tests/integration/test_aws.py does) is told to the policy, which tries the next one;
  - the job (a checkpointed counter writing a ledger on a directory the nodes share with us) runs to
    the end exactly once, within its deadline, and no instance is left running.
Root only (network namespaces)."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

from tests.integration.local_helpers import wait_for
from tests.integration.test_aws_autostop import ACCOUNT, ec2_nodes, mocked_aws  # noqa: F401 - fixtures
from tests.integration.test_aws_notice import shared_dir  # noqa: F401 - fixture

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")]

STEPS = 30  # 0.2 s each: ~6 s of work, under the declared `compute` (the policy's progress is the RUNNING time)
RUN = ('f="$BROKER_CHECKPOINT_DIR/step"; i=$(cat "$f" 2>/dev/null || echo 0); echo "resume $i" >> "$LEDGER"; '
       f'while [ "$i" -lt {STEPS} ]; do i=$((i+1)); echo "$i" > "$f.tmp" && mv "$f.tmp" "$f"; sleep 0.2; done; '
       'echo "done $i" >> "$LEDGER"')
TERMINAL = ("SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", "FAILED_CONTROLLER", "CANCELLED")


class SpotRefusals:
    """Record every RunInstances the product sends and refuse spot in the given AZ names, as EC2 does
    (a `before-parameter-build` hook on the product's own boto3 session)."""

    def __init__(self, session):
        self.refuse: set[str] = set()
        self.calls: list[tuple[str, bool, bool]] = []  # (AZ name, spot?, refused?)
        session.events.register("before-parameter-build.ec2.RunInstances", self._hook)

    def _hook(self, params, **_):
        from botocore.exceptions import ClientError

        az = (params.get("Placement") or {}).get("AvailabilityZone")
        spot = (params.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
        refused = spot and az in self.refuse
        self.calls.append((az, spot, refused))
        if refused:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message":
                                         f"We currently do not have sufficient m5.large capacity in the "
                                         f"Availability Zone you requested ({az})."}}, "RunInstances")


def _instances(ec2, cluster: str) -> list[dict]:
    """The instances of a cluster launched in this home (found by its name on the cloud)."""
    from tests.integration.local_helpers import cloud_name

    cluster = cloud_name(cluster)
    return [i for r in ec2.describe_instances(Filters=[{"Name": "tag:skybroker-cluster", "Values": [cluster]}])[
        "Reservations"] for i in r["Instances"]]


@pytest.mark.parametrize("recovery", [None, "FAILOVER"])
def test_deadline_job_spot_follows_the_multizone_policy_across_zones(ec2_nodes, mocked_aws, shared_dir,  # noqa: F811
                                                                    monkeypatch, recovery):
    """`recovery`: the default strategy (EAGER_NEXT_REGION, which avoids the region after a loss: the
    policy's zone of the same region is taken all the same) and FAILOVER (same place first: never over
    the policy's zone, which would relaunch in the zone that was just preempted)."""
    import boto3
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    from skybroker import api, spec, state
    from skybroker.jobs import controller as ctl
    from skybroker.jobs import ops, store
    from skybroker.jobs.deadline import zone_places

    nodes, hv = ec2_nodes
    for k, v in {"BROKER_JOBS_POLL": "0.3", "BROKER_CHECKPOINT_INTERVAL": "0.5"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(ops, "IN_PROCESS", True)  # the controller below, not a process of its own
    led = shared_dir / "ledger"
    task = spec.task_from_dict({
        "name": "mz-ec2", "envs": {"LEDGER": str(led)}, "run": RUN,
        "resources": {"infra": "aws/us-east-1", "instance_type": "m5.large", "image_id": "ami-12345678",
                      **({"job_recovery": recovery} if recovery else {})},
        # a 10-minute deadline for 20 s of compute: mz_union's table wants spot (a shorter one may rightly
        # go to on-demand at once, tests/integration/test_deadline_jobs.py); 1-s ticks
        "deadline": {"by": "10m", "compute": "20s", "tick": "1s", "overhead": "2s"}})
    ec2 = boto3.client("ec2", region_name="us-east-1")
    az_name = {z["ZoneId"]: z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    places, _ = zone_places(task)  # what the controller gives the policy: cheapest spot zone first
    assert len(places) >= 3 and {p["region"] for p in places} == {"us-east-1"}, places
    z = [p["zone"] for p in places]  # AZ IDs, as the catalog (and the cluster record) speak them
    refusals = SpotRefusals(mocked_aws._session())
    refusals.refuse.add(az_name[z[1]])  # the zone the policy should try after the first loss has no spot

    stop = threading.Event()
    controller = threading.Thread(target=ctl.Controller(workers=2).run,
                                  kwargs={"keep_going": lambda: not stop.is_set()}, daemon=True)
    lines = lambda: led.read_text().splitlines() if led.exists() else []  # noqa: E731
    events = lambda: store.events(jid)  # noqa: E731
    diag = lambda: "\n".join(f"{e['kind']}: {e['message']}" for e in events()) + "\n" + "\n".join(lines())  # noqa: E731
    t0 = time.monotonic()
    try:
        jid = ops.launch(task).id
        cluster = ctl.cluster_name(jid)
        controller.start()
        wait_for(lambda: store.get(jid).status == "RUNNING" and lines(), 60, 0.05, "the job to start\n" + diag())
        # 1. on spot, in the zone the policy picked: the cheapest one
        rec = state.get_cluster(cluster)
        (first,) = [i for i in _instances(ec2, cluster) if i["State"]["Name"] == "running"]
        assert rec.use_spot and rec.zone == z[0], (rec.zone, z, diag())
        assert first["InstanceLifecycle"] == "spot" and first["Placement"]["AvailabilityZone"] == az_name[z[0]]
        assert first["InstanceId"] in nodes
        # some progress, and a checkpoint copied to this side (the replacement resumes from the last copy)
        wait_for(lambda: _copied(jid) >= 3, 30, 0.05, "a checkpoint copy\n" + diag())
        saved = _copied(jid)
        # 2. EC2 reclaims the spot instance: gone in moto with the spot reason, its node powered off
        be = ec2_backends[ACCOUNT]["us-east-1"]
        be.terminate_instances([first["InstanceId"]])
        be.get_instance(first["InstanceId"]).state_reason = StateReason("reclaimed", "Server.SpotInstanceTermination")
        hv.pool.kill(nodes.pop(first["InstanceId"]))
        wait_for(lambda: store.get(jid).recoveries >= 1, 30, 0.05, "the preemption to be seen\n" + diag())
        wait_for(lambda: store.get(jid).status in TERMINAL, 90, 0.1, "the job to end\n" + diag())
    finally:
        stop.set()
        controller.join(30)
    took = time.monotonic() - t0
    j = store.get(jid)
    ev = events()
    assert j.status == "SUCCEEDED", diag()
    # the spot launches, in order, as EC2 saw them: the cheapest zone; after its loss not that zone again but
    # the next cheapest, which refused; then the next one, which took the job
    spot = [(az, refused) for az, is_spot, refused in refusals.calls if is_spot]
    assert spot == [(az_name[z[0]], False), (az_name[z[1]], True), (az_name[z[2]], False)], (spot, diag())
    assert all(is_spot for _, is_spot, _ in refusals.calls), refusals.calls  # never on-demand
    # the second instance ran the rest of the job, in the zone the policy picked
    insts = {i["InstanceId"]: i for i in _instances(ec2, cluster)}
    second = [i for iid, i in insts.items() if iid != first["InstanceId"]]
    assert len(second) == 1 and second[0]["Placement"]["AvailabilityZone"] == az_name[z[2]], insts
    assert second[0]["InstanceLifecycle"] == "spot"
    # 3. exactly once: resumed once from the checkpoint (not from 0), and finished once
    got = lines()
    resumes = [int(x.split()[1]) for x in got if x.startswith("resume")]
    assert len(resumes) == 2 and resumes[0] == 0 and saved <= resumes[1] < STEPS, (saved, got)
    assert [x for x in got if x.startswith("done")] == [f"done {STEPS}"] and got[-1] == f"done {STEPS}", got
    assert j.ended_at - j.submitted_at <= task.deadline_hours * 3600  # the deadline is met
    # the job's record says where it ran: the events and the cost timeline name both zones, in order
    ran = [e["message"] for e in ev if e["kind"] == "running"]
    assert [f"aws/us-east-1/{z[0]} " in ran[0], f"aws/us-east-1/{z[2]} " in ran[1], len(ran)] == [True, True, 2], ran
    assert any(e["kind"] == "recovery" and "preempted" in e["message"] for e in ev), diag()
    kinds = [(e["kind"], e["message"]) for e in ev]
    lost = next(i for i, (k, m) in enumerate(kinds) if k == "recovery" and "Server.SpotInstanceTermination" in m)
    refused = next(i for i, (k, m) in enumerate(kinds) if k == "failover" and
                   f"CapacityError on aws/us-east-1/{z[1]} (InsufficientInstanceCapacity)" in m)
    told = next(i for i, (k, m) in enumerate(kinds) if k == "policy" and m.startswith("no spot capacity"))
    assert f"spot in aws/us-east-1/{z[1]} refused; the policy tries another zone" in kinds[told][1], kinds[told]
    second_run = [i for i, (k, _) in enumerate(kinds) if k == "running"][1]
    assert lost < refused < told < second_run, diag()  # preempted, refused in the next zone, then ran in a third
    segs = api.job_timeline(jid)["segments"]
    assert [(s["market"], s["place"]) for s in segs] == [("spot", f"aws/us-east-1/{z[0]}"),
                                                         ("spot", f"aws/us-east-1/{z[2]}")], segs
    assert all(s["end"] is not None for s in segs), segs
    # nothing leaks: no instance left running in any zone, no node left up, no cluster left recorded
    live = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]
    assert live == [] and nodes == {}, (live, nodes)
    assert state.get_cluster(cluster) is None
    print(f"multi-zone deadline job on EC2: {took:.1f}s, zones {z[0]} -> ({z[1]} refused) -> {z[2]}")



def _copied(jid: int) -> int:
    """The step in the last complete checkpoint snapshot the controller copied from the node (0: none)."""
    from skybroker.jobs import checkpoint, store

    snap = checkpoint.current(store.job_dir(jid))
    f = snap / "step" if snap is not None else None
    try:
        return int(f.read_text().strip()) if f is not None else 0
    except (OSError, ValueError):
        return 0
