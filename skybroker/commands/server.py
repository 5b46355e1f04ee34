"""broker server (start, token create/list/revoke), broker login, broker logout."""
from __future__ import annotations

import os

import click

from .. import render
from .options import examples

DEFAULT_PORT = 46580


def _use_db(db: str | None) -> None:
    """--db for this process (and the threads and processes it starts): PostgreSQL, or SQLite."""
    if db:
        os.environ["BROKER_DB"] = db


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(epilog=examples("broker server start                                  # 127.0.0.1:46580, SQLite",
                             "broker server start --host 0.0.0.0 --certfile c.pem --keyfile k.pem \\",
                             "    --db postgresql://broker@db/broker",
                             "broker server token create alice                    # prints the token once",
                             "broker server token list ; broker server token revoke alice"))
def server():
    """Run the broker as a service for a team or CI (README: Teams and CI)."""


@server.command("start", epilog=examples("broker server start --port 46580",
                                         "broker server start --db postgresql://broker@localhost/broker"))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--db", metavar="URL", help="postgresql://… for the state (default: SQLite under BROKER_HOME). "
                                          "Also BROKER_DB.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP on a non-loopback address (tokens travel in clear).")
@click.option("--allow-local-cloud", is_flag=True,
              help="Let users launch on the local cloud, whose nodes are this machine (trusted users only).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="HTTP worker processes (the controller and the watcher run once, in this process).")
def start(host, port, db, certfile, keyfile, insecure, allow_local_cloud, workers):
    """Serve the broker's API (and the dashboard) and run the managed-jobs controller and the autostop
    watcher in this process. Cloud credentials are this machine's."""
    from ..errors import UsageError

    if bool(certfile) != bool(keyfile):
        raise UsageError("--certfile and --keyfile go together")
    if not certfile and not _is_loopback(host) and not insecure:
        raise UsageError(f"refusing plain HTTP on {host}: tokens and secrets would travel in clear",
                         "give --certfile and --keyfile (TLS), listen on 127.0.0.1 behind a TLS proxy, "
                         "or pass --insecure on a network you trust")
    _use_db(db)
    try:
        import uvicorn

        from ..server import app as app_mod, daemons
    except ImportError as exc:
        raise UsageError(f"`broker server start` needs {exc.name}, which is not installed",
                         "pip install 'skybroker[server]'") from None
    from .. import state

    state.db()  # a bad URL or an unusable database: said now, before listening
    if certfile:
        _check_tls(certfile, keyfile)
    # a port in use or a host that is not this machine's: exit 2 before anything is said or started (the
    # controller, the watcher), not uvicorn's log line and its exit 3 once the server had become the leader
    sock = _listen(host, port, "another `broker server`", "pass --port N for another port")
    if allow_local_cloud:
        os.environ["BROKER_SERVER_ALLOW_LOCAL_CLOUD"] = "1"  # seen by worker processes too (calls.py)
    where = "postgresql " + _redacted(state.db_url()) if state.db_url() else f"sqlite {state.db_path()}"
    scheme = "https" if certfile else "http"
    render.info(f"broker server on {scheme}://{host}:{port} (state: {where})")
    daemons.start()
    from ..client.http import SERVER_KEEP_ALIVE

    opts = dict(log_level="warning", access_log=False, ssl_certfile=certfile, ssl_keyfile=keyfile,
                timeout_graceful_shutdown=5, timeout_keep_alive=SERVER_KEEP_ALIVE)
    try:
        if workers == 1:
            try:  # on the socket checked above (as uvicorn.run does, a stopping signal ends it quietly)
                uvicorn.Server(uvicorn.Config(app_mod.create_app(), **opts)).run(sockets=[sock])
            except KeyboardInterrupt:
                pass
        else:  # uvicorn's worker processes bind for themselves
            sock.close()
            uvicorn.run("skybroker.server.app:create_app", host=host, port=port, factory=True, workers=workers, **opts)
    finally:
        sock.close()
        daemons.stop()
    return 0


def _check_tls(certfile: str, keyfile: str) -> None:
    """The certificate and key load (a wrong file is exit 2 naming them, not an ssl traceback)."""
    import ssl

    from ..errors import UsageError

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"--certfile {certfile} / --keyfile {keyfile}: not a certificate and its key "
                         f"({getattr(exc, 'reason', None) or exc})", "both PEM files; the key unencrypted") from None


def _redacted(url: str) -> str:
    from ..db_pg import redact_url

    return redact_url(url)


@server.group("token", epilog=examples("broker server token create alice", "broker server token list",
                                        "broker server token revoke alice"))
def token():
    """API tokens, one per user (stored hashed; shown once)."""


@token.command("create", epilog=examples("broker server token create alice", "broker server token create ci --admin"))
@click.argument("name")
@click.option("--admin", is_flag=True, help="May act on every user's clusters and jobs.")
@click.option("--db", metavar="URL", help="The server's state database (default: SQLite under BROKER_HOME).")
@click.option("--json", "as_json", is_flag=True, help="Print {name, admin, token}.")
def token_create(name, admin, db, as_json):
    """Create a user and print its token (only now: the server keeps a hash)."""
    from .. import users

    _use_db(db)
    tok = users.create(name, admin)
    if as_json:
        render.print_json({"name": name, "admin": admin, "token": tok})
    else:
        render.raw(tok)
        render.info(f"token for {name}{' (admin)' if admin else ''}: shown once, keep it secret; "
                    f"`broker login URL --token …` uses it")


@token.command("list", epilog=examples("broker server token list", "broker server token list --json"))
@click.option("--db", metavar="URL", help="The server's state database (default: SQLite under BROKER_HOME).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def token_list(db, as_json):
    """Users and their tokens' state (never the tokens)."""
    from .. import users

    _use_db(db)
    us = users.list_users()
    if as_json:
        render.print_json([{"name": u.name, "admin": u.admin, "created_at": u.created_at,
                            "revoked_at": u.revoked_at} for u in us])
    else:
        render.print_users(us)


@token.command("revoke", epilog=examples("broker server token revoke alice"))
@click.argument("name")
@click.option("--db", metavar="URL", help="The server's state database (default: SQLite under BROKER_HOME).")
def token_revoke(name, db):
    """Revoke a user's token (effective at the next request)."""
    from .. import users

    _use_db(db)
    users.revoke(name)
    render.info(f"token of {name} revoked")


@click.command(epilog=examples("broker login http://127.0.0.1:46580 --token brk_…",
                               "BROKER_API_SERVER=… BROKER_API_TOKEN=… broker status   # without a login file"))
@click.argument("url")
@click.option("--token", envvar="BROKER_API_TOKEN", help="Your API token (or BROKER_API_TOKEN; prompted if missing).")
def login(url, token):
    """Make every command a client of the broker server at URL (kept in BROKER_HOME/api.json, 0600)."""
    from ..client import save_login
    from ..client.http import Client
    from .options import can_prompt

    if not token:
        if not can_prompt():
            from ..errors import UsageError

            raise UsageError("no token given", "--token TOKEN or BROKER_API_TOKEN")
        token = click.prompt("Token", hide_input=True)
    client = Client(url.rstrip("/"), token)
    me = client.whoami()
    path = save_login(url, client.token)  # as sent: without the blanks around it
    render.info(f"logged in to {url} as {me['name']}{' (admin)' if me.get('admin') else ''}; saved in {path}")


@click.command(epilog=examples("broker logout"))
def logout():
    """Back to local mode: forget the server and the token (BROKER_HOME/api.json)."""
    from ..client import endpoint, leave_hint, remove_login

    render.info("logged out" if remove_login() else "not logged in")
    still = endpoint()
    render.info(f"commands still go to {still[0]}: {leave_hint()}" if still else "commands run locally")


@click.command(epilog=examples("broker dashboard                  # this machine's clusters and jobs in a browser",
                               "broker dashboard --port 46581"))
@click.option("--port", type=click.IntRange(0, 65535), default=46581, show_default=True, help="0: any free port.")
def dashboard(port):
    """Serve the dashboard of this machine's state (local mode) on 127.0.0.1, until Ctrl-C. Sign in with
    the token it prints (made for this run only). In server mode: https://SERVER:46580/dashboard."""
    import secrets

    from ..errors import UsageError

    try:
        import uvicorn

        from ..server import app as app_mod
    except ImportError as exc:
        raise UsageError(f"`broker dashboard` needs {exc.name}, which is not installed",
                         "pip install 'skybroker[server]'") from None
    sock = _listen("127.0.0.1", port)  # before the URL is printed: a port in use is said, not a crash
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    render.info(f"dashboard on http://127.0.0.1:{port}/dashboard — sign in with the token {token} "
                "(valid while this runs; Ctrl-C stops it)")
    server = uvicorn.Server(uvicorn.Config(app_mod.create_app(local_token=token), log_level="warning",
                                           access_log=False))
    try:
        server.run(sockets=[sock])  # re-raises the signal that stopped it (SIGINT, SIGTERM) once shut down
    finally:
        sock.close()
    if server.should_exit:  # stopped by a signal uvicorn handled without re-raising it
        raise KeyboardInterrupt
    return 0


def _listen(host: str, port: int, other: str = "another `broker dashboard`",
            another: str = "pass --port N for another port, or --port 0 for any free one"):
    """A socket bound to host:port (0: any free port), or a UsageError naming the host or the port."""
    import errno
    import socket

    from ..errors import UsageError

    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({getattr(exc, 'strerror', None) or exc})",
                         "an address or name of this machine: 127.0.0.1, or 0.0.0.0 for all of them") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT leftovers are no bar
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use ({other}, or another program)", another) from None
        raise UsageError(f"cannot listen on {host} port {port} ({exc.strerror or exc})",
                         f"--host: an address of this machine (0.0.0.0: all of them); {another}") from None
    return sock
