"""Ctrl-C for a thread that is not the main one: a server's call whose client went away, and the
per-node followers of a log stream that was interrupted. Python delivers SIGINT to the main thread only;
`interrupt(thread)` raises KeyboardInterrupt in another thread at its next Python instruction, so the
code there unwinds as it does on a real Ctrl-C (a runner kills the command it was running on the node, a
launch rolls back). A thread blocked in a C call gets it when that call returns (the runners wait in
steps of at most 0.5 s).
"""
from __future__ import annotations

import threading


def interrupt(thread: threading.Thread) -> bool:
    """Raise KeyboardInterrupt in `thread` (once per call). False if it is not running."""
    import ctypes

    if thread.ident is None or not thread.is_alive() or thread is threading.current_thread():
        return False
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))
    return n == 1
