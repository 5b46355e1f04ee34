"""All terminal output: tables and progress for people, JSON for scripts. The only module that prints (with
the command modules that call it).

Two paths:
- a terminal (stdout a tty): rich tables laid out to the terminal's width. A value is never cropped: when
  the table is too wide, columns are dropped in each table's declared order (the table says which, in a
  footer line), then long names are shortened with an ellipsis; numbers always keep their digits.
- a pipe: plain aligned columns with every column and every value in full (cheap to produce and to parse;
  rich is not even imported).

Progress (`Progress.event(kind, message)`, called by the core) is a spinner with the elapsed time per step
on a terminal, and one plain line per step otherwise.
"""
from __future__ import annotations

from .console import *  # noqa: F401,F403
from .console import _err_line, _err_tty, _esc, _m, _say, _tty  # noqa: F401
from .progress import *  # noqa: F401,F403
from .progress import _Live  # noqa: F401
from .table import *  # noqa: F401,F403
from .table import _shorten, _table, _text  # noqa: F401
from .views import *  # noqa: F401,F403
from .plan_views import *  # noqa: F401,F403
from .costs import *  # noqa: F401,F403
from .pools import *  # noqa: F401,F403
from .volume_views import print_volumes, volume_json  # noqa: F401
from .catalog_views import catalog_summary, price_header, refresh_summary  # noqa: F401
