"""An HTTPS ThreadingHTTPServer whose TLS handshake runs in the request's own thread.

`ctx.wrap_socket(server.socket, server_side=True)` (the usual recipe) makes `accept()` do the handshake in
the serving thread, with no timeout: one client that connects and never finishes its hello (a node killed
half-way, a port probe) freezes every later request. Here accept() returns the plain socket and the
handshake happens in the per-connection thread, bounded by HANDSHAKE_TIMEOUT."""
from __future__ import annotations

import ssl
from http.server import ThreadingHTTPServer

HANDSHAKE_TIMEOUT = 10.0


class TLSThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a stalled or broken hello: only this connection is dropped
        tls.settimeout(None)
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass
