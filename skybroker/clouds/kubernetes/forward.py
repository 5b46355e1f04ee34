"""SSH to a pod through the API server: a local TCP listener (127.0.0.1, a free port) whose every
connection is bridged to port 22 of the pod over the API server's `portforward` subresource (one
websocket per connection, opened by the official client). paramiko and the system ssh that rsync runs
both connect to the listener, so commands, file copies and workdir sync work unchanged from a laptop
that can reach only the API server (as `kubectl port-forward` does). A pod that is gone makes the
websocket fail: the local connection is closed at once and SSH sees EOF (the node is unreachable).
"""
from __future__ import annotations

import select
import socket
import threading


class Forwarder:
    def __init__(self, open_remote, name: str = "k8s-forward"):
        """`open_remote()` returns (handle with close(), socket-like object connected to the pod)."""
        self._open = open_remote
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(16)
        self.port = self._srv.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=name).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._srv.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # SSH's small writes, no Nagle delay
            except OSError:
                return
            threading.Thread(target=self._bridge, args=(conn,), daemon=True, name="k8s-forward-conn").start()

    def _bridge(self, conn: socket.socket) -> None:
        handle = remote = None
        try:
            handle, remote = self._open()
            socks = [conn, remote]
            while not self._closed.is_set():
                r, _, _ = select.select(socks, [], [], 1.0)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (remote if s is conn else conn).sendall(data)
        except Exception:  # noqa: BLE001 - any failure ends this one connection (SSH sees EOF)
            return
        finally:
            for s in (conn, remote):
                try:
                    if s is not None:
                        s.close()
                except OSError:
                    pass
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # noqa: BLE001
                    pass

    def close(self) -> None:
        self._closed.set()
        try:
            self._srv.close()
        except OSError:
            pass
