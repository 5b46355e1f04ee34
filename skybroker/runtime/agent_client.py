"""The one client of the node agent's protocol (runtime/agent/). Nothing else spells its commands.

Every call is one command over the node's runner (`<python> ~/.skybroker-node/agent.py <cmd>`); answers are
one JSON document. On a node that is a directory on this machine (local cloud), a look at one job (`poll`,
`status(job_id)`) reads the agent's files instead (runtime/channel.py), with no process. Log reads are
byte-exact (`read_log` returns bytes and the next offset), so an offset never drifts on output that is not
UTF-8. `run`, `follow_log` and `watch` stream lines of one long-lived command (`watch`: the channel the
managed-jobs controller is told through when to look at a job on SSH nodes, runtime/stream_feed.py).
"""
from __future__ import annotations

import base64
import json
import re
import shlex
from typing import Callable, Iterable

from ..errors import BrokerError, NotFoundError
from . import agent as agent_mod

NODE_DIR = "~/" + agent_mod.NODE_DIR
AGENT_PATH = NODE_DIR + "/agent.py"  # a small launcher; the agent itself is a package next to it, so
PACKAGE_DIR = NODE_DIR + "/" + agent_mod.PACKAGE  # Python caches its bytecode on the node (no compile per call)
# With under 1 MiB free it writes no bytecode: Python writes a .pyc without checking for a short write, so on a
# full disk it left a truncated one, and every later call failed on it ("EOFError: marshal data too short").
LAUNCHER = ("import os, sys\n"
            "d = os.path.dirname(os.path.abspath(__file__))\n"
            "sys.path.insert(0, d)\n"
            "try:\n"
            "    st = os.statvfs(d)\n"
            "    if st.f_bavail * st.f_frsize < 1 << 20:\n"
            "        sys.dont_write_bytecode = True\n"
            "except OSError:\n"
            "    pass\n"
            "try:\n"
            "    import %s\n"
            "except (EOFError, ValueError):  # a truncated .pyc of it (an older launcher's): compile afresh\n"
            "    import shutil\n"
            "    shutil.rmtree(os.path.join(d, %r, '__pycache__'), ignore_errors=True)\n"
            "    import %s\n"
            "sys.exit(%s.main())\n" % (agent_mod.PACKAGE, agent_mod.PACKAGE, agent_mod.PACKAGE,
                                         agent_mod.PACKAGE)).encode()
# What agents before the package installed and nothing runs any more: the single-file agent (the package
# shadows it). Their container module stays: a runner the old agent started may still import it when its
# queued job's turn comes.
OLD_FILES = ("skybroker_agent.py",)
# One command writes every file (one round trip per node): [name, text, mode] on stdin, each written to a
# temporary file and renamed, so a call running meanwhile sees the old file or the new one, never half of one.
_UNPACK = ("import json, os, sys\n"
           "d = os.path.expanduser(sys.argv[1])\n"
           "files, old = json.load(sys.stdin)\n"
           "for name, text, mode in files:\n"
           "    p = os.path.join(d, name)\n"
           "    t = '%s.broker-tmp-%d' % (p, os.getpid())\n"
           "    try:\n"
           "        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
           "        with open(t, 'w', encoding='utf-8') as f:\n"
           "            f.write(text)\n"
           "        os.chmod(t, mode)\n"
           "        os.replace(t, p)\n"
           "    except OSError as e:\n"
           "        try:\n"
           "            os.remove(t)\n"
           "        except OSError:\n"
           "            pass\n"
           "        if e.errno != 28:\n"
           "            raise\n"
           "        try:\n"
           "            st = os.statvfs(d)\n"
           "            free = st.f_bavail * st.f_frsize\n"
           "        except OSError:\n"
           "            free = -1\n"
           "        sys.stderr.write('BROKER-DISK-FULL %d [Errno 28] %s|%s\\n' % (free, e.strerror, p))\n"
           "        sys.exit(1)\n"
           "for name in old:\n"
           "    try:\n"
           "        os.remove(os.path.join(d, name))\n"
           "    except OSError:\n"
           "        pass\n")

# What _UNPACK says when the node's disk is full (ENOSPC): the free bytes (-1: unknown), the error, the file.
_UNPACK_FULL = re.compile(r"BROKER-DISK-FULL (?P<free>-?\d+) (?P<text>[^|\n]*)\|(?P<path>[^\n]+)")


class AgentError(BrokerError):
    """The agent on a node answered with an error."""


DISK_FULL_HINT = ("free space on that node's disk (its job logs are under ~/.skybroker-node/jobs), or tear the "
                  "cluster down and launch it with a larger `disk_size`")


def _error(label: str, out: dict, msg: str) -> AgentError:
    """The error for an agent's answer `out` (`msg`: its text); a full disk gets a hint."""
    return AgentError(f"node agent on {label}: {msg}", DISK_FULL_HINT if out.get("disk_full") else None)


def _install_disk_full(label: str, path: str, text: str, free: int | None) -> AgentError:
    """Installing the agent ran out of disk: said like the agent's own disk-full answer (the node, the file,
    the free space, the hint), never a bare "[Errno 28] No space left on device"."""
    kib = "" if free is None else "; %d KiB free" % (free // 1024)
    return AgentError(f"installing the node agent on {label} failed: its disk is full: {path} cannot be written "
                      f"({text}{kib})", DISK_FULL_HINT)


class ContainerFailed(AgentError):
    """The node's container could not be made ready: `code` is the agent's (container.ENGINE_MISSING,
    PULL_FAILED, START_FAILED) as `agent_code`; `detail` the agent's message."""

    def __init__(self, label: str, code: int, detail: str):
        self.label, self.agent_code, self.detail = label, code, detail
        super().__init__(f"{label}: {detail}")


class AgentOutdated(AgentError):
    """The node's agent predates the command (installed by an older broker): `install()` updates it."""


class AgentMissing(AgentOutdated):
    """The node has no agent at all (a re-imaged host, its ~/.skybroker-node removed): the command did not
    run. Submission (`exec`, `launch -c`, under the cluster's lock) installs it and goes on."""

    def __init__(self, label: str):
        super().__init__(f"the node agent is missing on {label} ({AGENT_PATH} not found: the host was re-imaged "
                         "or that directory removed)", "`broker exec` or `broker launch -c` on the cluster "
                         "installs it again (the jobs the host ran before are not known there any more)")


def _missing(res) -> bool:
    """The command could not start because the agent's launcher is not on the node (Python says so, exit 2)."""
    return res.exit_code == 2 and "can't open file" in res.stderr and "agent.py" in res.stderr


class AgentClient:
    def __init__(self, runner, python: str = "python3 -S", label: str = ""):
        self.runner = runner
        self.python = python
        self.label = label or getattr(runner, "node_id", "node")

    # -- plumbing ----------------------------------------------------------------------------------
    def _cmd(self, *args) -> str:
        return f"{self.python} {AGENT_PATH} " + " ".join(shlex.quote(str(a)) for a in args)

    def _call(self, *args, stdin: bytes | None = None, timeout: float = 60.0, missing_ok: bool = False,
              container: bool = False) -> dict:
        res = self.runner.run(self._cmd(*args), stdin=stdin, timeout=timeout)
        if _missing(res):
            raise AgentMissing(self.label)
        out: dict = {}
        text = res.stdout.strip()
        if text:
            try:
                out = json.loads(text.splitlines()[-1])
            except ValueError:
                out = {}
        if res.exit_code == 3 and missing_ok:
            return {}
        if container and res.exit_code in (4, 5, 6):
            raise ContainerFailed(self.label, res.exit_code, out.get("error") or res.stderr.strip()[-500:])
        if res.exit_code != 0:
            msg = out.get("error") or res.stderr.strip()[-500:] or f"exit code {res.exit_code}"
            if res.exit_code == 3:
                raise NotFoundError(f"{self.label}: {msg}")
            raise _error(self.label, out, msg)
        return out

    # -- commands ----------------------------------------------------------------------------------
    def install(self) -> None:
        """The agent's package and its launcher (last: a node with a launcher has the whole agent)."""
        # __init__.py after the rest of the package and the launcher last: a call that starts meanwhile
        # (the old launcher imports the package once its __init__.py is there) finds the whole package
        files = sorted(((f"{agent_mod.PACKAGE}/{name}", data, 0o644) for name, data in agent_mod.sources()),
                       key=lambda f: f[0].endswith("/__init__.py"))
        files.append(("agent.py", LAUNCHER, 0o755))
        if getattr(self.runner, "local_home", None) is not None:  # a directory here: no process needed
            import errno
            import os

            node_dir = self.runner.local_home() / agent_mod.NODE_DIR
            path = node_dir
            try:  # each file written to a temporary file and renamed (put_file): never half of one in place
                for name, data, mode in files:
                    path = node_dir / name
                    self.runner.put_file(data, f"{NODE_DIR}/{name}", mode)
                _compile(node_dir / agent_mod.PACKAGE)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                try:
                    st = os.statvfs(node_dir if node_dir.is_dir() else self.runner.local_home())
                    free = st.f_bavail * st.f_frsize
                except OSError:
                    free = None
                where = e.filename or path
                raise _install_disk_full(self.label, str(where), f"[Errno {e.errno}] {e.strerror}", free) from None
            return
        payload = json.dumps([[(n, d.decode("utf-8"), m) for n, d, m in files], list(OLD_FILES)]).encode()
        res = self.runner.run(f"{self.python} -c {shlex.quote(_UNPACK)} {NODE_DIR}", stdin=payload, timeout=120)
        if res.exit_code != 0:
            full = _UNPACK_FULL.search(res.stderr)
            if full:
                raise _install_disk_full(self.label, full["path"], full["text"],
                                         int(full["free"]) if full["free"] != "-1" else None)
            lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
            # a Python error on the node: its last line says it (PermissionError: … '/home/u/.skybroker-node')
            why = (lines[-1].strip() if lines and lines[0].startswith("Traceback") else res.stderr.strip()[-300:])
            raise AgentError(f"installing the node agent on {self.label} failed: {why or f'exit code {res.exit_code}'}",
                             f"the login user needs a writable home on the node (~/{NODE_DIR})"
                             if "PermissionError" in why or "Read-only" in why else None)

    def version(self) -> str:
        return self._call("version")["version"]

    def next_id(self, token: str | None = None) -> tuple[int, bool]:
        """(job id, whether the token already had one)."""
        out = self._call("next-id", *(("--token", token) if token else ()))
        return int(out["job_id"]), bool(out.get("existing"))

    def submit(self, payload: dict) -> dict:
        return self._call("submit", stdin=json.dumps(payload).encode())

    def run(self, payload: dict, on_line: Callable[[str], None], on_start: Callable[[int], None] | None = None
            ) -> tuple[int | None, dict | None]:
        """Submit and follow in ONE call (the agent's `run`): the id is allocated on the node (by the
        payload's token, if any), `on_start(job_id)` is called once the job is on the node, every log
        line goes to `on_line`, and the job's final row comes back: (job_id, row), or (job_id, None) if the
        stream ended before the job did. AgentError if the agent refused the job (nothing was started)."""
        import uuid

        marker = "BROKER-" + uuid.uuid4().hex
        seen: dict = {}

        def line(text: str) -> None:
            if text.startswith(marker + " "):
                doc = json.loads(text[len(marker) + 1:])
                if "job_id" in doc and "start" not in seen:
                    seen["start"] = int(doc["job_id"])
                    if on_start is not None:
                        on_start(seen["start"])
                else:
                    seen["end"] = doc.get("job")
            elif "start" in seen and "end" not in seen:
                on_line(text)

        res = self.runner.run(self._cmd("run", "--marker", marker), stdin=json.dumps(payload).encode(), stream=line)
        if "start" not in seen and _missing(res):
            raise AgentMissing(self.label)
        if "start" not in seen:
            out: dict = {}
            try:
                out = json.loads(res.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                pass
            msg = out.get("error") or res.stderr.strip()[-500:] or f"exit code {res.exit_code}"
            if res.exit_code == 2 and msg.startswith("usage: agent.py"):
                raise AgentOutdated(f"node agent on {self.label} predates `run`")
            raise _error(self.label, out, msg)
        return seen["start"], seen.get("end")

    def release(self, job_id: int) -> dict:
        return self._call("release", int(job_id))

    def _local(self, job_id: int, offset: int = 0) -> tuple[bytes, int, dict | None] | None:
        """A look at a job through the node's files when the node is a directory here (no process);
        None when only the agent can answer."""
        home = getattr(self.runner, "local_home", None)
        if home is None:
            return None
        from . import channel

        try:
            return channel.read_job(home(), job_id, offset)
        except channel.NeedsAgent:
            return None

    def status(self, job_id: int | None = None, token: str | None = None, timeout: float = 30.0) -> list[dict]:
        if job_id is not None and token is None:
            got = self._local(int(job_id))
            if got is not None:
                return [got[2]] if got[2] is not None else []
        args = ["status"]
        if job_id is not None:
            args += ["--job", int(job_id)]
        elif token is not None:
            args += ["--token", token]
        return self._call(*args, timeout=timeout)["jobs"]

    def read_log(self, job_id: int, offset: int = 0, wait_seconds: float = 0, timeout: float = 30.0
                 ) -> tuple[bytes, int, str | None]:
        """(bytes from `offset` (at most 1 MiB), the next offset, the job's status); b"" for an unknown job."""
        out = self._call("logs", int(job_id), "--offset", int(offset), "--b64", "--wait-seconds", wait_seconds,
                         timeout=timeout + wait_seconds, missing_ok=True)
        if not out:
            return b"", offset, None
        return base64.b64decode(out["data"]), int(out["next"]), out.get("status")

    def poll(self, job_id: int, offset: int = 0, timeout: float = 30.0) -> tuple[bytes, int, dict | None]:
        """One look at a job on this node: (log bytes from `offset`, next offset, the job's status row —
        None if the node has no such job). One agent call instead of a status and a log read; none at all
        on a node that is a directory on this machine (runtime/channel.py)."""
        got = self._local(int(job_id), int(offset))
        if got is not None:
            return got
        out = self._call("logs", int(job_id), "--offset", int(offset), "--b64", timeout=timeout, missing_ok=True)
        if not out:
            return b"", offset, None
        return base64.b64decode(out["data"]), int(out["next"]), out.get("job")

    def follow_log(self, job_id: int, on_line: Callable[[str], None], follow: bool = True) -> bool:
        """Stream a job's log lines (until it ends, with follow). False if the node has no such job."""
        args = ["logs", int(job_id)] + (["--follow"] if follow else [])
        res = self.runner.run(self._cmd(*args), stream=on_line)
        return res.exit_code != 3

    def watch(self, job_ids: Iterable[int], on_event: Callable[[dict], None], every: float = 0.3, beat: float = 2.0,
              also: str | None = None) -> None:
        """Follow jobs on this node through ONE long-lived agent command (`watch`; its lines are documented
        there): `on_event(doc)` for each, in the runner's streaming thread. Returns when the agent ended it
        (every job terminal or unknown); raises AgentOutdated on an agent without `watch`, NodeUnreachable
        when the connection drops, whatever `on_event` raises (the command is then killed)."""
        docs: list = []

        def line(text: str) -> None:
            try:
                doc = json.loads(text)
            except ValueError:
                return
            if isinstance(doc, dict) and "error" not in doc:
                docs.append(True)
                on_event(doc)
            elif isinstance(doc, dict):
                docs.append(doc)

        args = ["watch", *(int(j) for j in job_ids), "--every", every, "--beat", beat,
                *(("--also", also) if also else ())]
        res = self.runner.run(self._cmd(*args), stream=line)
        if True not in docs and _missing(res):
            raise AgentMissing(self.label)
        if res.exit_code != 0 or True not in docs:
            msg = next((d["error"] for d in docs if isinstance(d, dict)), None) or res.stderr.strip()[-500:] or \
                f"exit code {res.exit_code}"
            if res.exit_code == 2 and msg.startswith("usage: agent.py"):
                raise AgentOutdated(f"node agent on {self.label} predates `watch`")
            raise _error(self.label, next((d for d in docs if isinstance(d, dict)), {}), msg)

    def cancel(self, job_ids: Iterable[int] | None = None, timeout: float = 60.0) -> list[int]:
        args = ["cancel", "--all"] if job_ids is None else ["cancel", *(int(j) for j in job_ids)]
        return list(self._call(*args, timeout=timeout).get("cancelled", []))

    def idle_seconds(self) -> float:
        return float(self._call("idle-seconds")["idle_seconds"])

    def autostop(self, idle_seconds: float | None, command: str | None = None, every: float = 10.0,
                 follow: str | None = None, follow_grace: float = 60.0, ssh_busy: bool = False) -> None:
        """Arm the node's own autostop (the node runs `command` once idle that long; with `follow`, a
        worker also waits until its head, HOST:PORT, has stopped answering for `follow_grace` seconds),
        or clear it (None). With `ssh_busy`, an interactive SSH session on the node counts as activity."""
        if idle_seconds is None:
            self._call("autostop", "--clear")
            return
        args = ["autostop", "--idle-seconds", idle_seconds, "--command", command, "--every", every]
        if follow:
            args += ["--follow", follow, "--follow-grace", follow_grace]
        if ssh_busy:
            args.append("--ssh-busy")
        self._call(*args)

    # -- the node's container (runtime/agent/container.py) -------------------------------------------------
    def container_check(self) -> dict:
        """The engine the node would use; ContainerFailed (ENGINE_MISSING) when it has none."""
        return self._call("container-check", container=True)

    def container_up(self, spec: dict, password: str | None = None, timeout: float = 3600.0) -> dict:
        """Pull and start the node's container (a registry password goes on stdin, and only to `login`)."""
        data = json.dumps({"spec": spec, "password": password}).encode()
        return self._call("container-up", stdin=data, timeout=timeout, container=True)

    def container_restart(self) -> dict:
        return self._call("container-restart", timeout=600.0, container=True)

    def container_stop(self) -> dict:
        return self._call("container-stop", timeout=300.0, container=True)

    def container_status(self) -> dict:
        return self._call("container-status", container=True)

    def claim(self, paths: Iterable[str]) -> list[str]:
        paths = list(paths)
        return self._call("claim", *paths).get("claimed", []) if paths else []

    def cleanup(self, timeout: float = 120.0) -> list[str]:
        """Cancel everything and remove what the broker created on the node. No agent: nothing to do."""
        cmd = (f"if [ -f {AGENT_PATH} ]; then {self._cmd('cleanup')}; "
               f"else echo '{{\"removed\": []}}'; fi")
        res = self.runner.run(cmd, timeout=timeout)
        if res.exit_code != 0:
            msg = res.stderr.strip()[-300:] or res.stdout.strip()[-300:] or f"exit code {res.exit_code}"
            raise AgentError(f"cleanup on {self.label} failed: {msg}")
        try:
            return json.loads(res.stdout.strip().splitlines()[-1]).get("removed", [])
        except (ValueError, IndexError):
            return []


def _compile(package_dir) -> None:
    """Bytecode for a node that is a directory here: its agent runs with this environment, and where that
    forbids writing bytecode (PYTHONDONTWRITEBYTECODE) every call would compile the agent again. Otherwise
    the first call writes it: nothing to do here."""
    import sys

    if not sys.dont_write_bytecode:
        return
    import errno
    import importlib.util
    import marshal
    import os
    import py_compile

    # An OSError (a full disk) is raised, naming the .pyc, not printed (compileall printed "*** Error
    # compiling ..." on stdout and went on). py_compile writes to a temporary file and renames it, but does
    # not check for a short write: on a full disk it put a truncated .pyc in place, which every later call
    # of the agent then failed on ("EOFError: marshal data too short"). So each one is read back.
    for src in sorted(package_dir.glob("*.py")):
        cfile = importlib.util.cache_from_source(str(src))
        try:
            py_compile.compile(str(src), cfile=cfile, doraise=True)
            with open(cfile, "rb") as f:
                data = f.read()
            try:
                marshal.loads(data[16:])  # the header is 16 bytes (PEP 552)
            except (EOFError, ValueError, TypeError):
                os.remove(cfile)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), cfile) from None
        except py_compile.PyCompileError:
            pass  # the agent's own sources compile; a broken one is the interpreter's to report when run
        except OSError as e:
            if e.filename is None:
                e.filename = cfile
            raise
