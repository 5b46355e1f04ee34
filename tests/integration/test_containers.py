"""Tasks with `image_id: docker:IMAGE` on a real container engine (rootful podman) pulling from a real
registry (docker-registry, htpasswd auth): on the local cloud and on real sshd nodes (tests/infra/netns.py).

The image (tests/infra/containers.py) has a marker file and an /etc/os-release the hosts do not have, so a
line printed from them proves setup and run executed inside the container. Skipped without root, podman,
runc, docker-registry or htpasswd.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.infra import containers as C
from tests.integration.local_helpers import broker, broker_bg, broker_home, kill_leftovers, wait_for, cluster_dir, cloud_name

_why = C.missing_requirements() or (None if shutil.which("rsync") else "rsync is needed for workdir sync")
pytestmark = pytest.mark.skipif(bool(_why), reason=f"container engine tests: {_why}")

IMAGE = "brokertest:1"


@pytest.fixture(scope="module")
def lab():
    """(engine config, registry, image reference in the registry) for the local cloud's nodes."""
    root = Path("/var/tmp") / f"skybroker-ctest-{os.getpid()}"
    registry = C.Registry(root / "registry", "127.0.0.1")
    engine = C.EngineConfig(root / "engine", insecure=(registry.address,))
    try:
        C.import_image(engine, C.build_rootfs(root / "rootfs"), f"localhost/{IMAGE}")
        ref = registry.push(engine, f"localhost/{IMAGE}", IMAGE)
        engine.podman("rmi", ref, check=False)  # the launch must pull it
        yield engine, registry, ref
    finally:
        for name in engine.containers():
            engine.podman("rm", "-f", name, check=False)
        registry.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def _task(path: Path, **fields) -> Path:
    fields.setdefault("resources", {"infra": "local"})
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def _login(registry) -> list[str]:
    return ["--env", f"SKYPILOT_DOCKER_USERNAME={registry.user}", "--env",
            f"SKYPILOT_DOCKER_SERVER={registry.address}", "--secret", "SKYPILOT_DOCKER_PASSWORD"]


def _ours(engine) -> list[str]:
    return [n for n in engine.containers() if n.startswith("skybroker-")]


def _assert_secret_nowhere(secret: str, *texts: str) -> None:
    for t in texts:
        assert secret not in t
    for base in (broker_home(), Path(os.environ["HOME"])):
        for p in base.rglob("*"):
            if p.is_file() and not p.is_symlink():
                try:
                    assert secret.encode() not in p.read_bytes(), p
                except OSError:
                    pass


def test_local_two_nodes_run_inside_the_image(lab, tmp_path):
    engine, registry, ref = lab
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "data.txt").write_text("from-the-workdir\n")
    t = _task(tmp_path / "t.yaml", name="ctr", num_nodes=2, workdir=str(wd),
              resources={"infra": "local", "image_id": f"docker:{IMAGE}"},
              envs={"FOO": "foo-value"},
              setup="cat /opt/brokertest/IMAGE_ONLY",
              run=('. /etc/os-release; echo "os=$ID rank=$SKYPILOT_NODE_RANK twin=$BROKER_NUM_NODES foo=$FOO '
                   'pw=${#SKYPILOT_DOCKER_PASSWORD} cwd=$(pwd)"; cat data.txt; exit 3'))
    env = {**engine.env, "SKYPILOT_DOCKER_PASSWORD": registry.password}
    r = broker("launch", "-y", "-c", "ctr", t, *_login(registry), cwd=tmp_path, env=env, timeout=180)
    assert r.returncode == 3, r.stdout + r.stderr  # the run's exit code, from inside the container
    assert r.stdout.count("only in the image") == 2, r.stdout  # setup ran in the image on both nodes
    for rank in (0, 1):
        assert f"os=brokertest rank={rank} twin=2 foo=foo-value pw={len(registry.password)} " in r.stdout, r.stdout
    assert r.stdout.count("from-the-workdir") == 2 and "/sky_workdir" in r.stdout
    assert len(_ours(engine)) == 2
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    _assert_secret_nowhere(registry.password, r.stdout, r.stderr, ps)

    # exec on the cluster runs in the same containers; down removes them
    r = broker("exec", "ctr", "--", ". /etc/os-release; echo exec-os=$ID", env=engine.env, timeout=60)
    assert r.returncode == 0 and r.stdout.count("exec-os=brokertest") == 2, r.stdout + r.stderr
    assert broker("down", "-y", "ctr", env=engine.env).returncode == 0
    assert _ours(engine) == []


def test_local_cancel_signals_the_process_in_the_container(lab, tmp_path):
    engine, registry, ref = lab
    t = _task(tmp_path / "t.yaml", name="cc", resources={"infra": "local", "image_id": f"docker:{ref}"},
              run=('trap "echo got-term > ~/term.txt; exit 143" TERM; echo started; '
                   'while :; do sleep 0.2; done'))
    env = {**engine.env, "SKYPILOT_DOCKER_PASSWORD": registry.password}
    p = broker_bg("launch", "-y", "-c", "cc", t, *_login(registry), cwd=tmp_path, env=env)
    node = cluster_dir("cc") / "node-0"
    try:
        wait_for(lambda: any("started" in f.read_text(errors="replace")
                             for f in node.glob(".skybroker-node/jobs/*/run.log")), timeout=120)
        assert broker("cancel", "-y", "cc", "--all", env=engine.env).returncode == 0
        wait_for(lambda: (node / "term.txt").exists(), timeout=30)  # the trap ran: SIGTERM reached it
        assert (node / "term.txt").read_text().strip() == "got-term"
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    top = engine.podman("top", _ours(engine)[0], "args").stdout.decode()
    assert "got-term" not in top and "sleep 0.2" not in top, top  # nothing of the job is left in the container
    # stop keeps the container (stopped); start runs it again and jobs go on in it
    assert broker("stop", "-y", "cc", env=engine.env).returncode == 0
    name = _ours(engine)[0]
    assert engine.podman("inspect", "-f", "{{.State.Running}}", name).stdout.decode().strip() == "false"
    assert broker("start", "cc", env=engine.env).returncode == 0
    assert engine.podman("inspect", "-f", "{{.State.Running}}", name).stdout.decode().strip() == "true"
    r = broker("exec", "cc", "--", "cat /opt/brokertest/IMAGE_ONLY", env=engine.env, timeout=60)
    assert r.returncode == 0 and "only in the image" in r.stdout, r.stdout + r.stderr
    # a launch of the same image on the cluster reuses its container (no pull: no login needed)
    t2 = _task(tmp_path / "t2.yaml", name="cc2", resources={"infra": "local", "image_id": f"docker:{ref}"},
               run=". /etc/os-release; echo again-$ID")
    r = broker("launch", "-y", "-c", "cc", t2, cwd=tmp_path, env=engine.env, timeout=120)
    assert r.returncode == 0 and "again-brokertest" in r.stdout, r.stdout + r.stderr
    assert _ours(engine) == [name]
    assert broker("down", "-y", "cc", env=engine.env).returncode == 0
    assert _ours(engine) == []


@pytest.mark.parametrize("case", ["no-such-image", "wrong-password"])
def test_local_failed_pull_is_a_clear_error_and_tears_down(lab, tmp_path, case):
    engine, registry, ref = lab
    image = f"{registry.address}/nope:1" if case == "no-such-image" else ref
    password = registry.password if case == "no-such-image" else "not-the-password-123"
    t = _task(tmp_path / "t.yaml", name="bad", resources={"infra": "local", "image_id": f"docker:{image}"},
              run="echo never")
    r = broker("launch", "-y", "-c", "bad", t, *_login(registry), cwd=tmp_path,
               env={**engine.env, "SKYPILOT_DOCKER_PASSWORD": password}, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "resources.image_id" in r.stderr and "Traceback" not in r.stderr
    assert ("could not be pulled" in r.stderr) and ("login" in r.stderr) == (case == "wrong-password"), r.stderr
    assert "never" not in r.stdout
    assert broker("status", "--json", env=engine.env).stdout.strip() == "[]"  # torn down
    assert _ours(engine) == [] and not cluster_dir("bad").exists()
    _assert_secret_nowhere(password, r.stdout, r.stderr)


def test_local_node_without_engine_fails_at_the_agent_stage(lab, tmp_path):
    """A node whose PATH has neither docker nor podman (every other tool of the host is there)."""
    engine, registry, ref = lab
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for f in Path(d).iterdir() if Path(d).is_dir() else ():
            if f.name not in ("docker", "podman", "sudo") and not (bin_dir / f.name).exists():
                (bin_dir / f.name).symlink_to(f)
    t = _task(tmp_path / "t.yaml", name="noeng", resources={"infra": "local", "image_id": f"docker:{ref}"},
              run="echo never")
    r = broker("launch", "-y", "-c", "noeng", t, cwd=tmp_path, env={**engine.env, "PATH": str(bin_dir)},
               timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "resources.image_id" in r.stderr and "neither docker nor podman" in r.stderr, r.stderr
    assert "installing the node agent" in r.stderr and "apt-get install -y docker.io" in r.stderr, r.stderr
    assert broker("status", "--json", env=engine.env).stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ real sshd nodes
NODE_CONF = "/tmp/containers"  # as a node sees it: its own /tmp, so each node has its own engine storage


@pytest.fixture(scope="module")
def ssh_lab(node_key):
    """Two root-login sshd nodes (each with its own podman storage) and a registry on the pool's bridge."""
    from tests.infra.netns import NodePool, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(f"sshd test nodes unavailable: {why}")
    root = Path("/var/tmp") / f"skybroker-cssh-{os.getpid()}"
    env = {k: v.replace(str(root / "x"), NODE_CONF) for k, v in C.EngineConfig(root / "x").env.items()}
    pool = NodePool(root / "pool", user="root", env=env, cgroups=True)
    registry = None
    try:
        registry = C.Registry(root / "registry", pool.gateway)
        builder = C.EngineConfig(root / "builder", insecure=(registry.address,))
        C.import_image(builder, C.build_rootfs(root / "rootfs"), f"localhost/{IMAGE}")
        ref = registry.push(builder, f"localhost/{IMAGE}", IMAGE)
        yield pool, registry, ref, node_key
    finally:
        pool.close()
        if registry is not None:
            registry.close()
        shutil.rmtree(root, ignore_errors=True)


def _node_podman(node, key, *args) -> str:
    r = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", f"root@{node.ip}", "podman " + " ".join(args)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_ssh_nodes_gang_runs_in_the_container(ssh_lab, tmp_path):
    pool, registry, ref, (key, pub) = ssh_lab
    nodes = pool.start(2, pub)
    for n in nodes:
        C.EngineConfig(n.tmp / "containers", seen_as=NODE_CONF, insecure=(registry.address,))
    home = broker_home()
    home.mkdir(parents=True, exist_ok=True)
    hosts = "\n".join(f"    - {n.ip}" for n in nodes)
    (home / "ssh_node_pools.yaml").write_text(f"lab:\n  user: root\n  identity_file: {key}\n  hosts:\n{hosts}\n")
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "data.txt").write_text("synced-data\n")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "m.txt").write_text("mounted-outside-home\n")
    (tmp_path / "cfg.txt").write_text("mounted-in-home\n")
    t = _task(tmp_path / "t.yaml", name="sshctr", num_nodes=2, workdir=str(wd),
              resources={"infra": "ssh/lab", "image_id": f"docker:{IMAGE}"}, envs={"FOO": "bar"},
              file_mounts={"/tmp/cdata": str(tmp_path / "mnt"), "~/cfg/c.txt": str(tmp_path / "cfg.txt")},
              config={"docker": {"run_options": ["-e FROM_RUN_OPTIONS=yes"]}},
              setup="cat /opt/brokertest/IMAGE_ONLY",
              run=('. /etc/os-release; echo "os=$ID rank=$SKYPILOT_NODE_RANK foo=$FOO home=$HOME '
                   'opts=$FROM_RUN_OPTIONS"; cat data.txt /tmp/cdata/m.txt ~/cfg/c.txt; '
                   '[ "$SKYPILOT_NODE_RANK" = 1 ] && exit 7; exit 0'))
    try:
        r = broker("launch", "-y", "-c", "sshctr", t, *_login(registry), cwd=tmp_path,
                   env={"SKYPILOT_DOCKER_PASSWORD": registry.password}, timeout=240)
        assert r.returncode == 7, r.stdout + r.stderr  # the failing node's code, from its container
        assert r.stdout.count("only in the image") == 2, r.stdout
        for rank in (0, 1):
            assert f"os=brokertest rank={rank} foo=bar home=/root opts=yes" in r.stdout, r.stdout
        for words in ("synced-data", "mounted-outside-home", "mounted-in-home"):  # same paths inside
            assert r.stdout.count(words) == 2, r.stdout
        assert registry.password not in r.stdout + r.stderr
        for n in nodes:
            assert "skybroker-" in _node_podman(n, key, "ps", "--format", "{{.Names}}")
            assert not (n.tmp / "containers" / "auth.json").exists()
        # cancel: SIGTERM reaches the job's process in each node's container
        r = broker("exec", "-d", "sshctr", "--", 'trap "echo got-term > ~/term.txt; exit 143" TERM; '
                   "touch ~/started; while :; do sleep 0.2; done", timeout=60)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: all((n.home / "started").exists() for n in nodes), timeout=60)
        assert broker("cancel", "-y", "sshctr", "--all").returncode == 0
        for n in nodes:
            wait_for(lambda: (n.home / "term.txt").exists(), timeout=30)
            assert "sleep 0.2" not in _node_podman(n, key, "top", "-l", "args")
        assert broker("down", "-y", "sshctr").returncode == 0
        for n in nodes:  # the pool's hosts keep nothing of the cluster: no container, no node directory
            assert _node_podman(n, key, "ps", "-a", "--format", "{{.Names}}").strip() == ""
            assert not (n.home / ".skybroker-node").exists()
    finally:
        broker("down", "-y", "sshctr")
        for n in nodes:
            pool.kill(n)


def test_local_managed_job_in_a_container_survives_a_preemption(lab, tmp_path, monkeypatch):
    """The controller's bring-up has the container stage too: the replacement node pulls and starts the
    image again, and the job resumes from its checkpoint inside it."""
    from skybroker.clouds import registry as clouds
    from tests.integration.local_helpers import kill_pids
    from tests.integration.test_managed_jobs import (TERMINAL, controller_pid, job, launch_detached,
                                                     synced_counter, until, wait_status)

    engine, registry, ref = lab
    for k, v in {**engine.env, "SKYPILOT_DOCKER_PASSWORD": registry.password, "BROKER_JOBS_POLL": "0.3",
                 "BROKER_CHECKPOINT_INTERVAL": "0.5", "BROKER_CONTROLLER_EXIT_GRACE": "1"}.items():
        monkeypatch.setenv(k, v)  # the controller (a background process) inherits them
    run = (". /etc/os-release; f=$BROKER_CHECKPOINT_DIR/counter; i=$(cat \"$f\" 2>/dev/null || echo 0); "
           "echo \"segment os=$ID start=$i\"; while [ \"$i\" -lt 40 ]; do i=$((i+1)); echo $i > \"$f.tmp\"; "
           "mv \"$f.tmp\" \"$f\"; sleep 0.2; done; echo \"final os=$ID i=$i\"")
    t = _task(tmp_path / "m.yaml", name="mctr", run=run,
              resources={"infra": "local", "image_id": f"docker:{ref}", "job_recovery": "FAILOVER"})
    jid = launch_detached(t, *_login(registry))
    try:
        wait_status(jid, "RUNNING", 120)
        try:
            until(lambda: synced_counter(jid) >= 3, 30, "checkpoint progress", jid)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{broker('jobs', 'logs', jid).stdout}") from None
        clouds.get("local").preempt(cloud_name(f"job-{jid}"), 0)
        until(lambda: job(jid).recoveries == 1, 30, "recovery recorded", jid)
        j = wait_status(jid, TERMINAL, 120)
    finally:
        pid = controller_pid()
        if pid:
            kill_pids([pid])
    assert j.status == "SUCCEEDED", j
    out = broker("jobs", "logs", jid).stdout
    starts = [int(ln.split("start=")[1]) for ln in out.splitlines() if "segment os=brokertest" in ln]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 3, out  # resumed, in the image both times
    assert "final os=brokertest i=40" in out
    wait_for(lambda: _ours(engine) == [], timeout=30)  # the finished job's cluster took its container along
