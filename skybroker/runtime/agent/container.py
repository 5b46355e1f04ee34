"""A task's container on a node (`resources.image_id: docker:IMAGE`, SkyPilot's "container as runtime").

Stdlib only, Python >= 3.8, like the node agent: part of its package (~/.skybroker-node/skybroker_agent/container.py)
and used only by it (the agent's `container-*` commands and its job runner); the local cloud uses it in-process
to stop and remove its nodes' containers.

One long-lived container per node, named ``skybroker-<hash of the node directory>``:

* engine: ``docker`` if its daemon answers, else ``podman`` (same command line); for a non-root login user
  whose engine needs root, the same through ``sudo -n -E``. Neither: EngineMissing (agent exit code 4).
* pull: always (as SkyPilot does). With registry credentials the password goes to ``login --password-stdin``
  (never on a command line) and the login is written to a private temporary auth file used for this one pull
  and removed right after: no credential stays on the node. A failed pull: PullFailed (exit 5).
* run: ``run -d`` with ``--net=host`` and ``--ipc=host`` (unless ``config.docker.run_options`` say otherwise),
  the GPUs when the node has them, the node user's home bind-mounted at the same path (and HOME set to it),
  so ``~/sky_workdir``, ``~`` file mounts and the agent's job files have the same paths inside, plus every
  absolute mount point outside the home; then the run options. The entrypoint is a shell that sleeps until
  stopped. A failed start: StartFailed (exit 6).
* jobs: ``exec -w WORKDIR -e NAME... CONTAINER sh -c 'exec bash SCRIPT'``; values of the task's envs and
  secrets reach ``exec`` through its environment (``-e NAME`` without a value), never its command line.

The record ``container.json`` in the node directory holds the engine, the container name, the image and the
run command line (no secret: nothing secret is ever on it), so a stopped node's container is started again
(or re-created from the same command line if the engine lost it) and teardown removes it.
"""
import hashlib
import os
import shlex
import subprocess

STATE_FILE = "container.json"
ENGINE_MISSING, PULL_FAILED, START_FAILED = 4, 5, 6
KEEPALIVE = 'trap "exit 0" TERM INT; while :; do sleep 86400 & wait $!; done'
# Runs the phase's script with bash when the image has it (SkyPilot's images do), else with sh.
# bash as SkyPilot runs a phase (`bash -i`, see jobs.prologue); its no-terminal warnings go nowhere (the
# script's first line sends stderr back to the log)
_SHELL = 'if command -v bash >/dev/null 2>&1; then exec bash --norc -i "$0" 2>/dev/null; fi; exec sh "$0"'


class ContainerError(Exception):
    def __init__(self, message, code):
        Exception.__init__(self, message)
        self.code = code


def _run(argv, stdin=None, timeout=None, env=None):
    """(exit code, combined output) of one engine command; 127 when the program is missing."""
    try:
        p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           env=env)
    except FileNotFoundError as e:
        return 127, str(e)
    except subprocess.TimeoutExpired:
        return 124, "timed out after %ss" % timeout
    return p.returncode, p.stdout.decode("utf-8", "replace").strip()


def _which(name):
    import shutil

    return shutil.which(name)


# ------------------------------------------------------------------------------------------- the engine
def detect(run=_run, which=_which, is_root=None):
    """(engine argv prefix, kind): the first of docker, podman that answers `info` (through `sudo -n -E`
    for a non-root user when only that works). Raises ContainerError(ENGINE_MISSING) saying what was tried."""
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    sudo = None if is_root else which("sudo")
    tried = []
    for kind in ("docker", "podman"):
        path = which(kind)
        if not path:
            continue
        for prefix in ([path],) + ((([sudo, "-n", "-E", path]),) if sudo else ()):
            rc, out = run(prefix + ["info"], timeout=60)
            if rc == 0:
                return prefix, kind
            tried.append("%s: %s" % (" ".join(prefix), (out.splitlines() or ["exit code %d" % rc])[-1][:200]))
    if not tried:
        raise ContainerError("neither docker nor podman is installed on the node", ENGINE_MISSING)
    raise ContainerError("no usable container engine on the node (%s)" % "; ".join(tried), ENGINE_MISSING)


def has_gpus():
    return os.path.exists("/dev/nvidia0") or bool(_which("nvidia-smi"))


def container_name(base):
    return "skybroker-" + hashlib.sha256(os.path.abspath(base).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ command lines
def split_options(run_options):
    """config.docker.run_options (a string or a list of strings, each possibly several words) → argv."""
    if not run_options:
        return []
    items = [run_options] if isinstance(run_options, str) else list(run_options)
    out = []
    for item in items:
        out.extend(shlex.split(str(item)))
    return out


def _given(opts, *flags):
    return any(o == f or o.startswith(f + "=") for o in opts for f in flags)


def run_argv(engine, kind, name, image, home, mounts=(), run_options=(), gpus=False):
    """The `run -d` command line of the node's container (pure: unit-tested as is)."""
    opts = split_options(run_options)
    argv = list(engine) + ["run", "-d", "--name", name, "--label", "skybroker.container=1"]
    if not _given(opts, "--net", "--network"):
        argv.append("--net=host")
    if not _given(opts, "--ipc"):
        argv.append("--ipc=host")
    if gpus and not _given(opts, "--gpus", "--runtime", "--device"):
        argv += ["--gpus", "all"] if kind == "docker" else ["--device", "nvidia.com/gpu=all"]
    home = home.rstrip("/") or "/"
    seen = set()
    for m in [home] + [m for m in mounts if not (m == home or m.startswith(home + "/"))]:
        m = os.path.normpath(m)
        if m not in seen:
            seen.add(m)
            argv += ["-v", "%s:%s" % (m, m)]
    argv += ["-e", "HOME=" + home, "-w", home]
    argv += opts
    argv += ["--entrypoint", "/bin/sh", image, "-c", KEEPALIVE]
    return argv


def exec_argv(state, env_names, workdir, script):
    """The command line that runs one phase's SCRIPT in the node's container, in WORKDIR, with the named
    environment variables taken from exec's own environment."""
    argv = list(state["engine"]) + ["exec", "-w", workdir]
    for n in sorted(env_names):
        argv += ["-e", n]
    return argv + [state["name"], "/bin/sh", "-c", _SHELL, script]


def login_argv(engine, kind, authdir, username, server):
    if kind == "docker":
        return list(engine) + ["--config", authdir, "login", "--username", username, "--password-stdin", server]
    return list(engine) + ["login", "--authfile", os.path.join(authdir, "auth.json"), "--username", username,
                           "--password-stdin", server]


def pull_argv(engine, kind, image, authdir=None):
    if authdir is None:
        return list(engine) + ["pull", image]
    if kind == "docker":
        return list(engine) + ["--config", authdir, "pull", image]
    return list(engine) + ["pull", "--authfile", os.path.join(authdir, "auth.json"), image]


def full_image(image, server):
    """SkyPilot's rule: with a registry server given, an image that does not name it is taken from it."""
    if server and not image.startswith(server.rstrip("/") + "/"):
        return server.rstrip("/") + "/" + image
    return image


def registry_of(image):
    """The registry host an image reference names (Docker Hub when its first part is not a host)."""
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# ------------------------------------------------------------------------------------------ the record
def load(base):
    import json

    try:
        with open(os.path.join(base, STATE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(base, state):
    import json

    path = os.path.join(base, STATE_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, sort_keys=True)
    os.replace(path + ".tmp", path)


def key(spec):
    """What makes a container the same one: image, run options, mount points."""
    return hashlib.sha256(repr((spec.get("image"), split_options(spec.get("run_options")),
                                sorted(spec.get("mounts") or ()))).encode()).hexdigest()[:16]


def running(state):
    """True / False for a container the engine knows, None when it does not know it (any more)."""
    rc, out = _run(list(state["engine"]) + ["inspect", "-f", "{{.State.Running}}", state["name"]], timeout=60)
    if rc != 0:
        return None
    return out.strip().splitlines()[-1:] == ["true"]


def ensure_running(state):
    """Start the recorded container if it is stopped; re-create it from its command line if the engine lost
    it (the image is still there, or is pulled by `run`)."""
    st = running(state)
    if st:
        return "running"
    if st is False:
        rc, out = _run(list(state["engine"]) + ["start", state["name"]], timeout=120)
        if rc == 0:
            return "started"
        _run(list(state["engine"]) + ["rm", "-f", state["name"]], timeout=60)
    rc, out = _run(state["run"], timeout=600)
    if rc != 0:
        raise ContainerError("starting container %s (%s) failed: %s" % (state["name"], state["image"], out[-500:]),
                             START_FAILED)
    return "recreated"


def up(base, spec, password=None, busy=False):
    """Make the node's container the one SPEC asks for: {image, run_options, mounts, username, server}.
    The same one already there is (re)started; another one is replaced (refused while a job runs)."""
    state = load(base)
    want = key(spec)
    if state is not None:
        if state.get("key") == want:
            return {"container": state["name"], "image": state["image"], "state": ensure_running(state)}
        if busy:
            raise ContainerError("the node's container runs %s and a job is still active; the task asks for "
                                 "%s" % (state["image"], spec.get("image")), START_FAILED)
        down(base)
    engine, kind = detect()
    home = os.path.expanduser("~")
    server = spec.get("server") or ""
    image = full_image(spec["image"], server)
    mounts = [os.path.normpath(m) for m in spec.get("mounts") or ()]
    for m in mounts:
        try:
            os.makedirs(m, exist_ok=True)  # a mount point nobody made yet (docker would, podman refuses)
        except OSError:
            pass  # not ours to create (a non-root user): the engine says what is wrong, if anything
    _pull(engine, kind, image, spec.get("username"), password, server)
    name = container_name(base)
    argv = run_argv(engine, kind, name, image, home, mounts, spec.get("run_options"), gpus=has_gpus())
    _run(list(engine) + ["rm", "-f", name], timeout=60)  # a leftover of a node directory removed by hand
    rc, out = _run(argv, timeout=600)
    if rc != 0:
        raise ContainerError("starting a container of %s failed: %s" % (image, out[-500:]), START_FAILED)
    state = {"engine": engine, "kind": kind, "name": name, "image": image, "run": argv, "key": want}
    _save(base, state)
    return {"container": name, "image": image, "state": "created"}


def _pull(engine, kind, image, username, password, server):
    import shutil
    import tempfile

    authdir = None
    try:
        if username and password:
            authdir = tempfile.mkdtemp(prefix="skybroker-login-")  # 0700, removed below
            rc, out = _run(login_argv(engine, kind, authdir, username, server or registry_of(image)),
                           stdin=password.encode(), timeout=120)
            if rc != 0:
                raise ContainerError("registry login to %s as %s failed: %s" % (server, username, out[-300:]),
                                     PULL_FAILED)
        rc, out = _run(pull_argv(engine, kind, image, authdir), timeout=3600)
        if rc != 0:
            raise ContainerError("pulling %s failed: %s" % (image, out[-500:]), PULL_FAILED)
    finally:
        if authdir:
            shutil.rmtree(authdir, ignore_errors=True)


def stop(base):
    state = load(base)
    if state is not None and running(state):
        _run(list(state["engine"]) + ["stop", "-t", "5", state["name"]], timeout=120)
    return state is not None


def remove(state):
    """Remove a recorded container (its record may already be gone with its node directory)."""
    if state is not None:
        _run(list(state["engine"]) + ["rm", "-f", state["name"]], timeout=120)


def down(base):
    """Remove the node's container and its record; True if there was one."""
    state = load(base)
    if state is None:
        return False
    remove(state)
    try:
        os.unlink(os.path.join(base, STATE_FILE))
    except OSError:
        pass
    return True
