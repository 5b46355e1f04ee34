"""A fake of the clouds' instance metadata servers, for the parts the node agent reads: the preemption notice.

What it reproduces, as the clouds document them: AWS IMDSv2 (a PUT /latest/api/token with the TTL header
gives a token; GET spot/instance-action without it is 401, 404 until a notice, then 200 with the action
JSON), GCP instance/preempted (403 without `Metadata-Flavor: Google`; FALSE, then TRUE), Azure Scheduled
Events (400 without `Metadata: true`; an empty Events list, then a Preempt event). On a cloud each instance
has its own metadata server at 169.254.169.254; here one server plays them all: `noticed = True` announces a
preemption to every client, and `noticed_for(ip)` (a callable the test sets) to the instances whose address
it accepts, so one node of several can be told. Azure managed identities: GET
/metadata/identity/oauth2/token?api-version=…&resource=… (400 without `Metadata: true` or a resource; 400
`Identity not found` when `identity_token(ip)` — set by the test, e.g. ArmFake.token_for — has none for
the caller) gives {access_token, expires_in, resource, token_type}. Not reproduced: the token's TTL, the link-local address,
rate limits, the other metadata paths (404).
"""
from __future__ import annotations

import http.server
import json
import threading
from typing import Callable


class Metadata:
    def __init__(self, host: str = "127.0.0.1"):
        self.noticed = False
        self.noticed_for: Callable[[str], bool] = lambda ip: False
        self.identity_token: Callable[[str], str | None] = lambda ip: None
        self.token_requests = 0
        me = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _noticed(self) -> bool:
                return me.noticed or bool(me.noticed_for(self.client_address[0]))

            def do_PUT(self):
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(200, b"tok-123")
                self._send(400)

            def do_GET(self):
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                        return self._send(401)
                    return self._send(200, b'{"action": "terminate", "time": "2026-12-02T08:22:00Z"}') \
                        if self._noticed() else self._send(404)
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._send(403)
                    return self._send(200, b"TRUE" if self._noticed() else b"FALSE")
                if self.path.startswith("/metadata/identity/oauth2/token"):
                    from urllib.parse import parse_qs, urlsplit

                    q = parse_qs(urlsplit(self.path).query)
                    if self.headers.get("Metadata") != "true" or "resource" not in q or "api-version" not in q:
                        return self._send(400, b'{"error":"invalid_request","error_description":"Required '
                                               b'metadata header not specified or resource missing"}')
                    me.token_requests += 1
                    tok = me.identity_token(self.client_address[0])
                    if tok is None:
                        return self._send(400, b'{"error":"invalid_request","error_description":"Identity not found"}')
                    return self._send(200, json.dumps({"access_token": tok, "expires_in": "86399",
                                                       "resource": q["resource"][0], "token_type": "Bearer"}).encode())
                if self.path.startswith("/metadata/scheduledevents"):
                    if self.headers.get("Metadata") != "true":
                        return self._send(400)
                    ev = [{"EventId": "e1", "EventType": "Preempt", "NotBefore": "Mon, 02 Dec 2026 08:22:00 GMT"}]
                    return self._send(200, json.dumps({"DocumentIncarnation": 1,
                                                       "Events": ev if self._noticed() else []}).encode())
                self._send(404)

        self.srv = http.server.ThreadingHTTPServer((host, 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.base = f"http://{host}:{self.srv.server_address[1]}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
