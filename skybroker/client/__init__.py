"""Client mode: every command is a thin client of a broker server (`broker login URL --token …`, or
BROKER_API_SERVER + BROKER_API_TOKEN, or `api_server:` in the config file with the token from the login
file or the environment). Light on purpose: the standard library's http.client only, so `broker --help`
and `status` stay fast; nothing here imports the server stack (fastapi, uvicorn, psycopg).

The login file is BROKER_HOME/api.json (0600): {"server": URL, "token": TOKEN}.
"""
from __future__ import annotations

import json
import os

from ..errors import UsageError

LOGIN_FILE = "api.json"


def _login_path():
    from ..paths import broker_home

    return broker_home() / LOGIN_FILE


def read_login() -> dict:
    try:
        return json.loads(_login_path().read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {_login_path()}: {exc}", "`broker logout` removes it; `broker login` again")


def endpoint() -> tuple[str, str | None] | None:
    """(server URL, token) when client mode is on, else None. The environment wins over the login file,
    which wins over the config file's api_server."""
    url = os.environ.get("BROKER_API_SERVER")
    token = os.environ.get("BROKER_API_TOKEN")
    if url == "local":  # an explicit way out of client mode for one command
        return None
    login = read_login() if (not url or not token) else {}
    url = url or login.get("server")
    if not url:
        from .. import config

        url = config.get("api_server")
    if not url:
        return None
    return url.rstrip("/"), token or login.get("token")


def leave_hint() -> str:
    """How to go back to local mode, from where the server URL in effect comes from."""
    url = os.environ.get("BROKER_API_SERVER")
    if url and url != "local":
        return "unset BROKER_API_SERVER (or set it to local) to go back to local mode"
    if read_login().get("server"):
        return "`broker logout` (or BROKER_API_SERVER=local) goes back to local mode"
    from .. import config

    return (f"remove api_server from {config.where('api_server')} (or set BROKER_API_SERVER=local for one "
            "command) to go back to local mode")


def save_login(url: str, token: str) -> str:
    from ..paths import ensure_home, private_file

    ensure_home()
    path = _login_path()
    with private_file(path, "w") as f:  # 0600 whatever the umask; the token never goes elsewhere
        f.write(json.dumps({"server": url.rstrip("/"), "token": token}) + "\n")
    return str(path)


def remove_login() -> bool:
    try:
        _login_path().unlink()
        return True
    except FileNotFoundError:
        return False
