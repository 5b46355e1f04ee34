"""Ctrl-C during `broker launch` on AWS leaves nothing running: SIGINT is sent to a real `broker launch -y`
subprocess talking to a moto server (tests/infra/moto_server.py) at three moments — while the security
group is being created, while RunInstances is in flight (the server delays both by 2 s), and while the
CLI waits for SSH on the (unreachable) instance."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto")

from skybroker import state
from tests.conftest import REPO, broker_cmd
from tests.infra import moto_server
from tests.integration.local_helpers import cloud_name

TASK = """\
name: intr
resources:
  cloud: aws
  region: us-east-1
  instance_type: t3.micro
  image_id: ami-12345678
run: echo hi
"""


@pytest.fixture(scope="module")
def srv():
    s = moto_server.shared()
    yield s
    s.reset()


@pytest.fixture
def moto(srv, monkeypatch):
    srv.reset()
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield srv
    srv.reset()


class Launch:
    """`broker launch -y task.yaml -c NAME` in the background, its stderr collected line by line."""

    def __init__(self, tmp_path, cluster: str, extra_env: dict | None = None):
        (tmp_path / "task.yaml").write_text(TASK)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.cluster = cluster
        self.lines: list[str] = []
        self.proc = subprocess.Popen(broker_cmd() + ["launch", "-y", "task.yaml", "-c", cluster], cwd=str(tmp_path),
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._out: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, sink):
        for line in stream:
            sink.append(line)

    def wait_for(self, cond, what: str, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while not cond():
            if self.proc.poll() is not None:
                pytest.fail(f"broker exited ({self.proc.returncode}) before {what}:\n{self.output}")
            if time.time() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.05)

    def interrupt(self, timeout: float = 60.0, sig=signal.SIGINT) -> tuple[int, float]:
        """SIGINT (or `sig`) once; (exit code, seconds from the signal to the exit). Fails if it hangs."""
        t0 = time.time()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"broker did not exit within {timeout:.0f}s of SIGINT:\n{self.output}")
        for t in self._threads:
            t.join(5)
        return rc, time.time() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def output(self) -> str:
        return "".join(self._out) + "".join(self.lines)


def assert_nothing_left(srv, cluster: str) -> None:
    on_cloud = cloud_name(cluster)  # what the launch named and tagged its resources with
    insts = srv.instances(cluster=on_cloud, states=("pending", "running", "stopping", "stopped"))
    assert insts == [], [(i["InstanceId"], i["State"]["Name"]) for i in insts]
    groups = [g["GroupName"] for g in srv.ec2().describe_security_groups()["SecurityGroups"]]
    assert f"skybroker-{on_cloud}" not in groups
    assert state.open_intents(cluster) == []
    assert state.get_cluster(cluster) is None


def assert_clean_exit(rc: int, launch: Launch) -> None:
    assert rc == 130, launch.output
    assert "Traceback" not in launch.output


def test_sigint_while_run_instances_is_in_flight(moto, tmp_path):
    moto.fault("RunInstances", delay=2.0)
    launch = Launch(tmp_path, "intr-run")
    launch.wait_for(lambda: moto.calls("RunInstances"), "RunInstances")
    time.sleep(0.3)  # inside the server's 2 s delay
    rc, _ = launch.interrupt()
    assert_clean_exit(rc, launch)
    err = launch.stderr
    assert "interrupted: waiting for the cloud call in flight to return" in err
    assert "no instance of intr-run is left running" in err
    # the instance the in-flight call created was seen and terminated; nothing was started after it
    actions = [c["action"] for c in moto.calls()]
    assert actions.count("RunInstances") == 1 and "TerminateInstances" in actions
    assert "CreateTags" not in actions
    created = moto.instances(cluster=cloud_name("intr-run"), states=("shutting-down", "terminated"))
    assert len(created) == 1
    assert_nothing_left(moto, "intr-run")


def test_sighup_with_output_to_a_pipe_says_what_it_did(moto, tmp_path):
    """SIGHUP (the terminal closed) acts like Ctrl-C: the launch rolls back and exits 130, and output that
    goes to a pipe or a log file still gets the messages (they all went to /dev/null, so a log of the
    launch ended at the signal)."""
    moto.fault("RunInstances", delay=2.0)
    launch = Launch(tmp_path, "intr-hup")
    launch.wait_for(lambda: moto.calls("RunInstances"), "RunInstances")
    time.sleep(0.3)
    rc, _ = launch.interrupt(sig=signal.SIGHUP)
    assert_clean_exit(rc, launch)
    err = launch.stderr
    assert "interrupted: waiting for the cloud call in flight to return" in err
    assert "launch interrupted while provisioning; nothing of cluster intr-hup is left running" in err
    assert_nothing_left(moto, "intr-hup")


def test_sigint_during_security_group_setup(moto, tmp_path):
    moto.fault("CreateSecurityGroup", delay=2.0)
    launch = Launch(tmp_path, "intr-sg")
    launch.wait_for(lambda: moto.calls("CreateSecurityGroup"), "CreateSecurityGroup")
    time.sleep(0.3)
    rc, _ = launch.interrupt()
    assert_clean_exit(rc, launch)
    assert "no instance of intr-sg is left running" in launch.stderr
    assert moto.calls("RunInstances") == []  # the interrupted launch went no further
    assert moto.calls("DeleteSecurityGroup")  # the group created by the in-flight call was removed
    assert_nothing_left(moto, "intr-sg")


def test_sigint_while_waiting_for_ssh(moto, tmp_path):
    # moto instances get loopback public IPs with nothing listening: SSH can never connect, so without Ctrl-C
    # the CLI would wait the whole BROKER_WAIT_READY.
    launch = Launch(tmp_path, "intr-ssh", {"BROKER_WAIT_READY": "60"})
    launch.wait_for(lambda: "to accept commands" in launch.stderr, "the wait for SSH")
    time.sleep(1.0)
    rc, _ = launch.interrupt(timeout=8.0)  # generous: the cleanup is a few moto calls
    assert_clean_exit(rc, launch)
    assert "terminating intr-ssh" in launch.stderr
    assert moto.calls("TerminateInstances")
    assert_nothing_left(moto, "intr-ssh")
