"""Where skybroker keeps its state: BROKER_HOME (default ~/.broker)."""
from __future__ import annotations

import os
from pathlib import Path


def broker_home() -> Path:
    home = Path(os.environ.get("BROKER_HOME") or Path.home() / ".broker")
    return home


def ensure_home() -> Path:
    home = broker_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home
