"""Container images (`image_id: docker:...`): the task fields, what the client sends, and the node side's
engine command lines (runtime/agent/container.py), checked at the command-line level. The engine itself runs
for real in tests/integration/test_containers.py."""
from __future__ import annotations

import pytest

from skybroker import containers
from skybroker.errors import SpecError
from skybroker.runtime.agent import container as C
from skybroker.runtime.agent_client import ContainerFailed
from skybroker.spec import task_from_dict, task_from_stored, task_to_dict

ENGINE = ["/usr/bin/podman"]


def _task(**fields):
    data = {"name": "t", "run": "echo hi", "resources": {"infra": "aws", "image_id": "docker:ubuntu:22.04"}}
    data.update(fields)
    return task_from_dict(data)


# ------------------------------------------------------------------------------------------- the task
def test_docker_image_and_run_options_are_accepted_and_kept():
    t = _task(config={"docker": {"run_options": ["--cap-add=SYS_PTRACE", "--shm-size 16g"]}})
    assert containers.image_for(t, "aws", "us-east-1") == "ubuntu:22.04"
    assert t.docker_run_options == ("--cap-add=SYS_PTRACE", "--shm-size 16g")
    again = task_from_stored(task_to_dict(t))  # managed jobs store the task
    assert again.docker_run_options == t.docker_run_options
    assert containers.image_for(again, "aws", "us-east-1") == "ubuntu:22.04"
    assert containers.image_for(_task(resources={"infra": "aws"}), "aws", "us-east-1") is None


def test_per_region_container_image():
    t = _task(resources={"infra": "aws", "image_id": {"us-east-1": "docker:a:1", "us-west-2": "ami-0abc"}})
    assert containers.image_for(t, "aws", "us-east-1") == "a:1"
    assert containers.image_for(t, "aws", "us-west-2") is None  # a VM image there: runs on the VM


@pytest.mark.parametrize("fields, field", [
    ({"resources": {"image_id": "docker:"}}, "resources.image_id"),
    ({"config": {"docker": {"run_option": ["--x"]}}}, "config.docker.run_option"),
    ({"config": {"docker": {"run_options": [1]}}}, "config.docker.run_options"),
])
def test_bad_container_fields_name_the_field(fields, field):
    with pytest.raises(SpecError) as e:
        _task(**fields)
    assert f"{field}: " in e.value.message and e.value.exit_code == 2


def test_spec_sends_the_password_apart_and_only_absolute_mounts_outside_home(tmp_path):
    (tmp_path / "d").mkdir()
    t = _task(envs={"SKYPILOT_DOCKER_USERNAME": "me", "SKYPILOT_DOCKER_SERVER": "reg.example.com"},
              secrets={"SKYPILOT_DOCKER_PASSWORD": "hunter2-secret"},
              file_mounts={"/data": str(tmp_path / "d"), "~/cfg": str(tmp_path / "d")})
    spec, password = containers.spec_for(t, "ubuntu:22.04")
    assert password == "hunter2-secret" and "hunter2-secret" not in repr(spec)
    assert spec["username"] == "me" and spec["server"] == "reg.example.com" and spec["mounts"] == ["/data"]


def test_vm_request_never_gets_a_container_image():
    from skybroker.optimizer import Candidate
    from skybroker.provision import request_for

    t = _task()

    def cand(cloud):
        return Candidate(t.candidates[0], 0, cloud, "us-east-1", None, "m6i.large", 2, 8, None, 0, False, 0.1, 1)

    assert request_for("c", cand("aws"), None).image_id is None  # the default AMI; the container runs on it
    assert request_for("c", cand("kubernetes"), None).image_id == "docker:ubuntu:22.04"  # the pod is the image


@pytest.mark.parametrize("code, words", [(C.ENGINE_MISSING, "needs a container engine"),
                                         (C.PULL_FAILED, "could not be pulled"),
                                         (C.START_FAILED, "did not start")])
def test_node_errors_become_exit_2_naming_image_id(code, words):
    err = containers.error(ContainerFailed("c node 0", code, "detail"), "img:1")
    assert err.exit_code == 2 and err.field == "resources.image_id" and words in err.message
    assert "docker:img:1" in err.message and "c node 0: detail" in err.message
    if code == C.ENGINE_MISSING:
        assert "docker.io" in err.hint and "podman" in err.hint


# ------------------------------------------------------------------------------- engine command lines
def test_run_argv_defaults():
    argv = C.run_argv(ENGINE, "podman", "skybroker-x", "img:1", "/home/u", ["/data", "/home/u/sub"])
    assert argv[:4] == ENGINE + ["run", "-d", "--name"]
    assert "--net=host" in argv and "--ipc=host" in argv
    assert ["-v", "/home/u:/home/u"] == argv[argv.index("-v"):argv.index("-v") + 2]
    assert "/data:/data" in argv and "/home/u/sub:/home/u/sub" not in argv  # under the home: already there
    assert "HOME=/home/u" in argv and "--gpus" not in argv and "--device" not in argv
    assert argv[-5:-1] == ["--entrypoint", "/bin/sh", "img:1", "-c"]


def test_run_options_come_last_and_replace_our_defaults():
    argv = C.run_argv(ENGINE, "docker", "n", "img", "/root", (), ["--ipc=private --network bridge", "--shm-size=16g"])
    assert "--ipc=host" not in argv and "--net=host" not in argv
    i = argv.index("--ipc=private")
    assert argv[i:i + 4] == ["--ipc=private", "--network", "bridge", "--shm-size=16g"]
    assert argv.index("--entrypoint") > i


@pytest.mark.parametrize("kind, flags", [("docker", ["--gpus", "all"]), ("podman", ["--device", "nvidia.com/gpu=all"])])
def test_gpus_pass_through(kind, flags):
    argv = C.run_argv(["x"], kind, "n", "img", "/root", gpus=True)
    i = argv.index(flags[0])
    assert argv[i:i + 2] == flags
    given = C.run_argv(["x"], kind, "n", "img", "/root", run_options=["--gpus=1"], gpus=True)
    assert flags[0] not in given and "--gpus=1" in given  # the task's own GPU option wins


def test_exec_argv_names_variables_and_never_carries_values():
    st = {"engine": ["sudo", "-n", "-E", "/usr/bin/docker"], "name": "skybroker-x"}
    argv = C.exec_argv(st, ["SECRET_TOKEN", "FOO"], "/home/u/sky_workdir", "/home/u/.skybroker-node/jobs/1/run.sh")
    assert argv[:6] == ["sudo", "-n", "-E", "/usr/bin/docker", "exec", "-w"]
    assert argv[6] == "/home/u/sky_workdir"
    assert argv[7:11] == ["-e", "FOO", "-e", "SECRET_TOKEN"] and not any("=" in a for a in argv[7:11])
    assert argv[11] == "skybroker-x" and argv[-1].endswith("run.sh")


def test_login_and_pull_use_stdin_and_a_private_auth_file():
    d = "/tmp/skybroker-login-x"
    for kind in ("docker", "podman"):
        login = C.login_argv(ENGINE, kind, d, "me", "reg:5000")
        assert "--password-stdin" in login and login[-1] == "reg:5000" and "--password" not in login
        pull = C.pull_argv(ENGINE, kind, "reg:5000/a:1", d)
        assert pull[-1] == "reg:5000/a:1" and any(d in a for a in pull)
    assert C.pull_argv(ENGINE, "docker", "a:1") == ENGINE + ["pull", "a:1"]


def test_image_names():
    assert C.full_image("team/app:1", "reg.example.com") == "reg.example.com/team/app:1"
    assert C.full_image("reg.example.com/team/app:1", "reg.example.com") == "reg.example.com/team/app:1"
    assert C.full_image("ubuntu:22.04", "") == "ubuntu:22.04"
    assert C.registry_of("ubuntu:22.04") == "docker.io" and C.registry_of("library/ubuntu") == "docker.io"
    assert C.registry_of("localhost:5000/a") == "localhost:5000" and C.registry_of("nvcr.io/n/p:1") == "nvcr.io"


def test_split_options():
    assert C.split_options("--shm-size 16g --cap-add=X") == ["--shm-size", "16g", "--cap-add=X"]
    assert C.split_options(["-e 'A=b c'", "--ipc=host"]) == ["-e", "A=b c", "--ipc=host"]
    assert C.split_options(None) == []


# ------------------------------------------------------------------------------------ engine choice
def _runner(answers):
    calls = []

    def run(argv, stdin=None, timeout=None, env=None):
        calls.append(argv)
        return answers.get(" ".join(argv), (1, "Cannot connect to the Docker daemon. Is the docker daemon running?"))
    return run, calls


def test_docker_without_a_daemon_falls_back_to_podman():
    run, calls = _runner({"/p/podman info": (0, "ok")})
    which = {"docker": "/d/docker", "podman": "/p/podman"}.get
    assert C.detect(run=run, which=which, is_root=True) == (["/p/podman"], "podman")
    assert calls == [["/d/docker", "info"], ["/p/podman", "info"]]


def test_docker_first_and_sudo_for_a_non_root_user():
    run, calls = _runner({"/usr/bin/sudo -n -E /d/docker info": (0, "ok")})
    which = {"docker": "/d/docker", "sudo": "/usr/bin/sudo"}.get
    assert C.detect(run=run, which=which, is_root=False) == (["/usr/bin/sudo", "-n", "-E", "/d/docker"], "docker")


def test_no_engine_says_what_was_tried():
    with pytest.raises(C.ContainerError) as e:
        C.detect(run=_runner({})[0], which=lambda n: None, is_root=True)
    assert e.value.code == C.ENGINE_MISSING and "neither docker nor podman" in str(e.value)
    with pytest.raises(C.ContainerError) as e:
        C.detect(run=_runner({})[0], which={"docker": "/d/docker"}.get, is_root=True)
    assert e.value.code == C.ENGINE_MISSING and "/d/docker: Cannot connect to the Docker daemon" in str(e.value)


def test_same_spec_same_container_key():
    a = {"image": "i", "run_options": ["--a", "--b"], "mounts": ["/x", "/y"]}
    b = {"image": "i", "run_options": "--a --b", "mounts": ["/y", "/x"], "username": "u"}
    assert C.key(a) == C.key(b)
    assert C.key(a) != C.key(dict(a, image="j")) != C.key(dict(a, mounts=["/x"]))
