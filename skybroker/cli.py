"""`broker`: the command line. Parses arguments and renders results; the work happens in api.py.

Commands live in skybroker/commands/ (one module per group) and are imported only when invoked, so
`broker --help` stays fast. One handler turns every BrokerError into a readable message + hint + exit
code; `--debug` (or BROKER_DEBUG=1) shows the traceback too.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from . import __version__

# name → (module, attribute, one-line help). The help text is here so `--help` needs no imports.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "launch": ("skybroker.commands.cluster", "launch", "Plan a task, provision a cluster and run the task on it."),
    "exec": ("skybroker.commands.cluster", "exec_", "Run a task or command on an existing cluster."),
    "status": ("skybroker.commands.cluster", "status", "List clusters."),
    "down": ("skybroker.commands.cluster", "down", "Tear down clusters (terminate their instances)."),
    "stop": ("skybroker.commands.cluster", "stop", "Stop a cluster's instances (keep disks)."),
    "start": ("skybroker.commands.cluster", "start", "Start a stopped cluster."),
    "autostop": ("skybroker.commands.cluster", "autostop", "Stop or tear down a cluster after it is idle."),
    "queue": ("skybroker.commands.cluster", "queue", "Show a cluster's job queue."),
    "logs": ("skybroker.commands.cluster", "logs", "Show or follow a job's logs."),
    "cancel": ("skybroker.commands.cluster", "cancel", "Cancel jobs on a cluster."),
    "jobs": ("skybroker.commands.jobs", "jobs", "Managed jobs that survive spot preemption."),
    "cost-report": ("skybroker.commands.costs", "cost_report",
                    "What clusters and managed jobs cost: time up/stopped, spot savings, total."),
    "events": ("skybroker.commands.cluster", "events", "Show stored lifecycle, failover and recovery events."),
    "gc": ("skybroker.commands.cluster", "gc", "Find and remove resources skybroker created but no longer tracks."),
    "hostkeys": ("skybroker.commands.cluster", "hostkeys", "Pinned SSH host keys of cluster nodes: forget a changed one."),
    "storage": ("skybroker.commands.storage", "storage", "Buckets of file_mounts storages: list, delete."),
    "volumes": ("skybroker.commands.volumes", "volumes", "Volumes a task mounts (`volumes:`): apply, list, delete."),
    "check": ("skybroker.commands.info", "check", "Show which clouds are ready (credentials found, SDK installed)."),
    "settings": ("skybroker.commands.info", "settings", "Show every BROKER_* setting, its value and its default."),
    "ssh": ("skybroker.commands.cluster", "ssh", "Open a shell on a cluster node (plain `ssh CLUSTER` works too)."),
    "show-gpus": ("skybroker.commands.info", "show_gpus", "List accelerators and their cheapest prices."),
    "catalog": ("skybroker.commands.info", "catalog", "Price catalogs: build and inspect."),
    "simulate": ("skybroker.spot.cli", "simulate", "Simulate deadline-aware spot policies on real traces."),
    "completion": ("skybroker.commands.info", "completion", "Print the shell completion script (bash, zsh, fish)."),
    "examples": ("skybroker.commands.info", "examples_", "Copy the example tasks into ./examples (a pip install has none)."),
    "server": ("skybroker.commands.server", "server", "Run the broker as a service for a team or CI; manage its tokens."),
    "login": ("skybroker.commands.server", "login", "Make every command a client of a broker server."),
    "logout": ("skybroker.commands.server", "logout", "Back to local mode (forget the server and token)."),
    "dashboard": ("skybroker.commands.server", "dashboard", "Serve this machine's clusters and jobs as a web page."),
}

# Modules that come with an extra: a command that needs one that is missing says which extra to install.
EXTRAS = {"numpy": "simulate", "boto3": "aws", "botocore": "aws", "google": "gcp", "azure": "azure"}


def _needs_extra(name: str, module: str, extra: str) -> click.Command:
    """A stand-in for a command whose optional dependency is not installed."""

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []}, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args):
        from .errors import BrokerError

        raise BrokerError(f"`broker {name}` needs {module}, which is not installed",
                          f"pip install 'skybroker[{extra}]'")

    stub.help = COMMANDS[name][2] + f" (needs: pip install 'skybroker[{extra}]')"
    return stub


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, attr, _ = entry
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top in EXTRAS:
                return _needs_extra(name, top, EXTRAS[top])
            if exc.name and exc.name.startswith(module.rsplit(".", 1)[0]):
                return None  # command not built yet in this checkout
            raise
        return getattr(mod, attr, None)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            if args and args[0] in ("help", "version"):  # what people type first (git help, kubectl version)
                flag = f"{args[1]} --help" if args[0] == "help" and len(args) > 1 else f"--{args[0]}"
                raise click.UsageError(f"no such command {args[0]!r}; did you mean `broker {flag}`?") from None
            if args and args[0] not in COMMANDS and not args[0].startswith("-"):
                from difflib import get_close_matches

                close = get_close_matches(args[0], list(COMMANDS), n=1)
                if close:
                    raise click.UsageError(f"no such command {args[0]!r}; did you mean {close[0]!r}?") from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog="""\b
Examples:
  broker examples                             # copy the example tasks into ./examples
  broker launch -y examples/hello.yaml        # 2 local nodes, no cloud account needed
  broker launch --dryrun examples/v100.yaml   # the cheapest place for a task, provisions nothing
  broker status ; broker down -y hello-1a2b
  broker show-gpus A100 ; broker check
  broker completion bash                      # shell completion (bash, zsh, fish)

Every command has examples in its --help. Exit codes: 0 ok, 1 failure (a job: its own code),
2 bad input, 3 nothing fits, 4 clouds refused, 5 cluster/job not found, 6 over budget, 7 not allowed
(server mode: token, another user's cluster), 130 interrupted.""")
@click.version_option(__version__, prog_name="broker")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (also BROKER_DEBUG=1).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="One more config file, over ~/.broker/config.yaml and ./.broker.yaml (README: Config file).")
@click.pass_context
def cli(ctx, debug, config_file):
    """skybroker: run your job on the cheapest cloud that fits it, and keep it running.

    Tasks are SkyPilot-compatible YAML files. Start with:  broker examples && broker launch -y examples/hello.yaml
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if config_file:
        os.environ["BROKER_CONFIG"] = os.path.abspath(config_file)  # also seen by processes it starts


def _signals_interrupt() -> None:
    """SIGTERM (what `timeout`, CI runners and container stops send) and SIGHUP (the terminal went away)
    interrupt a command exactly like Ctrl-C: whatever it was creating is rolled back before it exits, and
    it says so. After SIGHUP the terminal is gone, so what went to the terminal goes to /dev/null instead of
    failing the cleanup; output redirected to a file or a pipe (a log, `nohup`, a CI runner) still gets
    the messages. Which fds were the terminal is noted now: a hung-up terminal may no longer say it is one."""
    import signal

    ttys = [fd for fd in (1, 2) if _isatty(fd)]

    def handler(signum, frame):
        if signum == signal.SIGHUP and ttys:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                for fd in ttys:
                    os.dup2(null, fd)
            except OSError:
                pass
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread (embedded use): leave the defaults
            pass


def _tolerant_streams() -> None:
    """Output is UTF-8 text (✔, ·, —, box lines); a stdout/stderr in another encoding (PYTHONIOENCODING=ascii,
    a Latin-1 locale, LC_ALL=C with PYTHONUTF8=0) shows '?' for what it cannot encode instead of a
    UnicodeEncodeError traceback in the middle of a command."""
    import codecs

    for stream in (sys.stdout, sys.stderr):
        try:
            if codecs.lookup(stream.encoding or "utf-8").name != "utf-8":
                stream.reconfigure(errors="replace")
        except (AttributeError, LookupError, ValueError, OSError):  # not a TextIOWrapper (tests, embedding)
            pass


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _quiet_sdk_logs() -> None:
    """Cloud SDKs log their retries and credential probing as warnings (azure-identity: about 15 lines per
    failed credential lookup, on every lookup), which Python prints on stderr when nothing is configured. The
    broker's own error says what failed and what to do; `--debug` shows the SDKs' logs too."""
    import logging

    logging.getLogger().addHandler(logging.NullHandler())


def main(argv=None) -> None:
    from .errors import BrokerError

    from . import settings

    _tolerant_streams()

    try:
        env_debug = settings.get("debug")
    except BrokerError:
        env_debug = False
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or env_debug
    if not debug:
        _quiet_sdk_logs()
    _signals_interrupt()
    try:
        rv = cli.main(args=argv, prog_name="broker", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except BrokerError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        from . import render

        render.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _stop_progress()
        sys.stderr.write("Aborted.\n")
        sys.exit(130)
    except click.ClickException as exc:
        _stop_progress()
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except KeyboardInterrupt:
        _stop_progress()
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


def _stop_progress() -> None:
    render = sys.modules.get("skybroker.render")  # only if something was rendered (keeps --help light)
    if render is not None:
        render.stop_progress()


if __name__ == "__main__":
    main()
