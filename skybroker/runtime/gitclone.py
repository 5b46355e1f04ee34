"""A git workdir (`workdir: {url, ref}`): cloned on every node into ~/sky_workdir, where a local workdir
would be synced, before setup (the lifecycle's sync stage).

The clone runs ON the node (its network, not the client's, reaches the repository), through the node's
command runner, as one bash script (CLONE_SCRIPT) that gets the url and ref as environment variables —
never spliced into a command line. `ref` may be a branch (checked out as that branch), a tag or a commit
(full or abbreviated; detached); without `ref` the remote's default branch. On a reused cluster the
existing ~/sky_workdir is fetched into and checked out again (tracked files are reset; untracked kept).

Credentials, as SkyPilot names them:
  - HTTPS: `GIT_TOKEN` (from the task's secrets or envs, e.g. `--secret GIT_TOKEN`, else the client's
    environment). It reaches git through a credential helper that reads it from the script's environment
    (runners never put env values on a command line); it is never written to a file or into the URL.
  - SSH: the private key at `GIT_SSH_KEY_PATH` (the task's envs/secrets, else the client's environment),
    else the `git_ssh_key` setting (BROKER_GIT_SSH_KEY). The key is read on the client and sent over the
    command's stdin; the script writes it under umask 077 (mode 0600) to ~/.skybroker-node/git/ and
    deletes it when the clone ends, whatever the outcome (an EXIT trap). git uses it via GIT_SSH_COMMAND
    (`-i KEY -o IdentitiesOnly=yes -o BatchMode=yes`). The git server's host key: checked against the
    `git_known_hosts` setting's file when given (StrictHostKeyChecking=yes), else accepted on first use
    per node (accept-new). With no key named, the node's own ssh configuration applies.
Managed jobs: the controller syncs, so pass GIT_TOKEN / GIT_SSH_KEY_PATH with the task (`--secret`,
`--env`) or set the settings in the config file; the controller's environment may be older than yours.

Failures name the field: the repository cannot be listed (unreachable, no such repository, refused
credentials) → `workdir.url`; no branch, tag or commit by that name → `workdir.ref`; no git on the node
→ `workdir`. They are SpecErrors (exit 2, USER): after provisioning, the lifecycle's teardown policy
terminates the new cluster, and a managed job fails without retrying.
"""
from __future__ import annotations

import os
import re

from ..errors import SpecError

WORKDIR = "~/sky_workdir"

LIST_SCRIPT = r'''
set -u
export GIT_TERMINAL_PROMPT=0
# the reflog entries of the checkout need an identity; without one git looks the host name up in DNS
# (seconds on a node whose resolver is slow or unreachable). These hold for this script only.
export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-skybroker}" GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-skybroker@localhost}"
d="$HOME/.skybroker-node/git"
mkdir -p "$d" && chmod 700 "$d" || exit 13
key=""
trap '[ -n "$key" ] && rm -f -- "$key"' EXIT
if [ "${BROKER_GIT_HAS_KEY:-}" = 1 ]; then
  key="$d/key-$$"
  (umask 077 && cat > "$key") || exit 13
else
  cat > /dev/null
fi
command -v git > /dev/null 2>&1 || { echo "git is not installed on this node" >&2; exit 10; }
opts="-o BatchMode=yes -o ConnectTimeout=20"
if [ -n "${BROKER_GIT_KNOWN_HOSTS:-}" ]; then
  opts="$opts -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$BROKER_GIT_KNOWN_HOSTS"
else
  opts="$opts -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=$d/known_hosts"
fi
[ -n "$key" ] && opts="$opts -i $key -o IdentitiesOnly=yes"
export GIT_SSH_COMMAND="ssh $opts"
if [ -n "${GIT_TOKEN:-}" ]; then
  set -- -c credential.helper= -c 'credential.helper=!f() { test "$1" = get && echo username=x-access-token && echo "password=$GIT_TOKEN"; }; f'
else
  set --
fi
url="$BROKER_GIT_URL"; ref="${BROKER_GIT_REF:-}"
fail() { tail -n 5 "$d/err" >&2; exit "$1"; }
git "$@" ls-remote "$url" > "$d/refs" 2> "$d/err" || fail 11
has() { awk -v r="$1" '$2 == r { f = 1 } END { exit !f }' "$d/refs"; }
'''

# On the client before anything is created (preflight): the same listing, then only whether the ref exists.
PROBE_SCRIPT = LIST_SCRIPT + r'''
[ -z "$ref" ] && exit 0
has "refs/heads/$ref" || has "refs/tags/$ref" || has "$ref" || has "refs/$ref" && exit 0
case "$ref" in *[!0-9a-fA-F]*) ;; ????*) exit 0 ;; esac
awk -v r="$ref" '{ n = length(r); if (substr($2, length($2) - n) == "/" r) f = 1 } END { exit !f }' "$d/refs" && exit 0
echo "no branch or tag named $ref" >&2
exit 12
'''

CLONE_SCRIPT = LIST_SCRIPT + r'''
wd="$HOME/sky_workdir"
mkdir -p "$wd" && cd "$wd" || exit 13
[ -d .git ] || git init -q . 2> "$d/err" || fail 13
git remote remove origin > /dev/null 2>&1
git remote add origin "$url" || exit 13
if [ -z "$ref" ]; then
  git "$@" fetch -q --depth 1 origin HEAD 2> "$d/err" || fail 11
  git checkout -q --force --detach FETCH_HEAD 2> "$d/err" || fail 13
  what="the default branch"
elif has "refs/heads/$ref"; then
  git "$@" fetch -q --depth 1 origin "+refs/heads/$ref:refs/remotes/origin/$ref" 2> "$d/err" || fail 11
  git checkout -q --force -B "$ref" "refs/remotes/origin/$ref" 2> "$d/err" || fail 13
  what="branch $ref"
elif has "refs/tags/$ref"; then
  git "$@" fetch -q --depth 1 origin "+refs/tags/$ref:refs/tags/$ref" 2> "$d/err" || fail 11
  git checkout -q --force --detach "refs/tags/$ref^{commit}" 2> "$d/err" || fail 13
  what="tag $ref"
else
  if git "$@" fetch -q --depth 1 origin "$ref" 2> /dev/null; then
    c=$(git rev-parse -q --verify "FETCH_HEAD^{commit}")
  else
    git "$@" fetch -q origin '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*' 2> "$d/err" || fail 11
    c=$(git rev-parse -q --verify "$ref^{commit}" 2> /dev/null) || c=""
  fi
  [ -n "$c" ] || { echo "no branch, tag or commit named $ref" >&2; exit 12; }
  git checkout -q --force --detach "$c" 2> "$d/err" || fail 13
  what="commit $ref"
fi
echo "checked out $what at $(git rev-parse HEAD)"
'''


class Credentials:
    """What the clone needs from the client, gathered once per sync. Secret values stay in `env` (passed
    as the script's environment) and `key` (sent on stdin); neither has a repr."""

    def __init__(self, env: dict[str, str], key: bytes | None, known_hosts: bytes | None):
        self.env, self.key, self.known_hosts = env, key, known_hosts

    def __repr__(self) -> str:
        return f"Credentials(token={'GIT_TOKEN' in self.env}, key={self.key is not None})"


def credentials(task) -> Credentials:
    from .. import settings

    given = {**task.env_dict, **task.secret_dict}
    env = {}
    token = given.get("GIT_TOKEN") or os.environ.get("GIT_TOKEN")
    if token:
        env["GIT_TOKEN"] = token
    key_path = given.get("GIT_SSH_KEY_PATH") or os.environ.get("GIT_SSH_KEY_PATH") or settings.get("git_ssh_key")
    key = _read(key_path, "GIT_SSH_KEY_PATH (or the git_ssh_key setting)", task) if key_path else None
    kh_path = settings.get("git_known_hosts")
    kh = _read(kh_path, "the git_known_hosts setting", task) if kh_path else None
    return Credentials(env, key, kh)


def _read(path: str, what: str, task) -> bytes:
    p = os.path.expanduser(path)
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SpecError(f"{what}: cannot read {path} ({exc.strerror or exc})",
                        "name a readable file", source=task.source, field="workdir") from None


def clone(runner, agent, task, creds: Credentials, node_label: str) -> str:
    """Clone/check out the task's repository on one node; returns the script's summary line."""
    agent.claim([WORKDIR])
    env = {**creds.env, "BROKER_GIT_URL": task.git_url, "BROKER_GIT_REF": task.git_ref or "",
           "BROKER_GIT_HAS_KEY": "1" if creds.key is not None else ""}
    if creds.known_hosts is not None:
        path = "~/.skybroker-node/git/known_hosts.given"
        runner.put_file(creds.known_hosts, path, 0o600)
        env["BROKER_GIT_KNOWN_HOSTS"] = runner.run('printf %s "$HOME"', timeout=30).stdout.strip() + \
            "/.skybroker-node/git/known_hosts.given"
    r = runner.run(CLONE_SCRIPT, env=env, stdin=creds.key or b"", timeout=1800)
    if r.exit_code == 0:
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "checked out"
    raise _error(r.exit_code, _clean(r.stderr, creds), task, node_label)


def preflight(task, creds: Credentials | None = None) -> None:
    """Before anything is created: list the repository from this machine, with the same credentials and
    the same script the nodes use, and refuse a ref that is neither a branch, a tag nor possibly a commit
    (`workdir.ref`, exit 2). Only a definite answer blocks: when the repository cannot be listed from here
    (no git, no route, a credential only the nodes have) the nodes still try and report it themselves."""
    import shutil
    import subprocess
    import tempfile

    from .. import settings

    timeout = settings.get("git_preflight_timeout")
    if not task.git_url or not task.git_ref or timeout <= 0 or not shutil.which("git") or not shutil.which("bash"):
        return
    creds = creds or credentials(task)
    with tempfile.TemporaryDirectory(prefix="skybroker-git-") as home:
        env = {k: v for k, v in os.environ.items() if k not in ("GIT_TOKEN", "GIT_DIR", "GIT_WORK_TREE")}
        env.update(creds.env, HOME=home, BROKER_GIT_URL=task.git_url, BROKER_GIT_REF=task.git_ref,
                   BROKER_GIT_HAS_KEY="1" if creds.key is not None else "")
        if creds.known_hosts is not None:
            kh = os.path.join(home, "known_hosts.given")
            with open(os.open(kh, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(creds.known_hosts)
            env["BROKER_GIT_KNOWN_HOSTS"] = kh
        try:  # its own process group, so a timeout stops git and ssh too, not only bash
            proc = subprocess.Popen(["bash", "-c", PROBE_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError:
            return
        try:
            proc.communicate(creds.key or b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
    if proc.returncode == 12:
        raise _error(12, "", task, "this machine")


def _clean(text: str, creds: Credentials) -> str:
    from ..spec_fields import _hide_userinfo

    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("+")]
    out = " / ".join(lines[-3:])[-400:]
    for v in creds.env.values():
        if v:
            out = out.replace(v, "<redacted>")
    return re.sub(r"[a-z+]+://[^\s/@]*@", lambda m: _hide_userinfo(m.group(0)), out)


def _error(code: int, detail: str, task, node: str) -> SpecError:
    from ..spec_fields import _hide_userinfo

    url = _hide_userinfo(task.git_url)
    tail = f": {detail}" if detail else ""
    if code == 12:
        return SpecError(f"{task.git_ref!r} is not a branch, tag or commit of {url}",
                         "fix `workdir.ref` (or --git-ref); `git ls-remote URL` lists branches and tags",
                         source=task.source, field="workdir.ref")
    if code == 11:
        return SpecError(f"{url} cannot be fetched on {node}{tail}",
                         "check `workdir.url` (or --git-url); a private repository needs GIT_TOKEN (https) or "
                         "GIT_SSH_KEY_PATH (ssh), e.g. `--secret GIT_TOKEN`", source=task.source,
                         field="workdir.url")
    if code == 10:
        return SpecError(f"git is not installed on {node}", "use an image with git, or a local `workdir:` folder",
                         source=task.source, field="workdir")
    return SpecError(f"preparing ~/sky_workdir for the git checkout failed on {node} (exit {code}){tail}", None,
                     source=task.source, field="workdir")
