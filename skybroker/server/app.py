"""The broker server: an ASGI app (FastAPI, served by uvicorn) in front of api.py's use cases.

    GET  /api/v1/health        no token: {"ok", "version"}
    GET  /api/v1/whoami        {"name", "admin"}
    POST /api/v1/call/<fn>     one use case (calls.py: authorization, then the work); see client/http.py
                               for the request and the two answer shapes (JSON, or an NDJSON stream)
    POST /api/v1/upload        a task's local sources (tar.gz) → {"id"}
    GET  /dashboard            server-rendered HTML (dashboard.py), the token as a cookie or header

Every request but health carries `Authorization: Bearer TOKEN` (users.py); the token is looked up on
each request, so a revoked token stops working at once. Work runs in threads (the state layer and the
clouds' SDKs are synchronous); a stream's thread gets KeyboardInterrupt at its next output when the
client went away, which is what Ctrl-C does locally (a launch rolls back, a follow stops).

Logs: one line per call (time, user, call, HTTP status, duration): never arguments, bodies or tokens.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import traceback

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__, state, users, wire
from ..errors import AuthError, BrokerError, ForbiddenError
from . import calls

PING_EVERY = 5.0
MAX_UPLOAD = 1 << 30
MAX_CALL = 64 << 20  # a call's JSON body (a task, a plan): far below this

_STATUS = {2: 400, 3: 422, 4: 502, 5: 404, 130: 499}


def http_status(exc: BrokerError) -> int:
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, ForbiddenError):
        return 403
    return _STATUS.get(exc.exit_code, 500)


def _internal(exc: BaseException) -> BrokerError:
    log(f"internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    return BrokerError(f"server error: {type(exc).__name__}: {exc}", "see the server's log; this is a bug")


def log(msg: str) -> None:
    print(f"{time.strftime('%F %T')} {msg}", flush=True)


def _error_response(exc: BrokerError) -> JSONResponse:
    return JSONResponse({"error": wire.error_dict(exc)}, status_code=http_status(exc))


def _authenticate(request: Request):
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get("broker_token")
    if not token:
        raise AuthError("no token given", "`broker login URL --token TOKEN` (an admin creates one with "
                        "`broker server token create NAME`)")
    local = request.app.state.local_token
    if local and token == local:  # `broker dashboard`: this machine's user, with a token made for the run
        return users.User("local", True)
    user = users.authenticate(token) if not local else None
    if user is None:
        raise AuthError("the server does not accept this token (unknown or revoked)",
                        "ask an admin for a new one, then `broker login URL --token TOKEN`")
    return user


def _as_user(user, fn, *args, **kwargs):
    tok = state.current_user.set(user.name)
    try:
        return fn(*args, **kwargs)
    finally:
        state.current_user.reset(tok)


def create_app(local_token: str | None = None) -> FastAPI:
    """The server's app. With `local_token` (`broker dashboard`): that one token only, no users table."""
    app = FastAPI(title="skybroker", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.local_token = local_token

    @app.get("/api/v1/health")
    def health():
        return {"ok": True, "version": __version__}

    @app.get("/api/v1/whoami")
    def whoami(request: Request):
        try:
            u = _authenticate(request)
        except BrokerError as exc:
            return _error_response(exc)
        return {"name": u.name, "admin": u.admin}

    if local_token is None:  # `broker dashboard` serves the page only, never the API
        _api_routes(app)

    @app.post("/dashboard/login")
    async def dashboard_login(request: Request):
        from urllib.parse import parse_qs

        from fastapi.responses import RedirectResponse

        from . import dashboard as dash

        token = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0].strip()
        ok = token == request.app.state.local_token if request.app.state.local_token else \
            await run_in_threadpool(users.authenticate, token) is not None
        if not ok:
            return HTMLResponse(dash.login_page("the server does not accept this token"), status_code=401)
        resp = RedirectResponse("/dashboard", status_code=303)
        resp.set_cookie("broker_token", token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @app.get("/dashboard")
    def dashboard(request: Request):
        from . import dashboard as dash

        try:
            user = _authenticate(request)
        except BrokerError as exc:
            return HTMLResponse(dash.login_page(exc.message))  # a page to sign in on, not an API error
        return HTMLResponse(_as_user(user, dash.page, user))

    return app


def _api_routes(app: FastAPI) -> None:
    @app.post("/api/v1/upload")
    async def upload(request: Request):
        try:
            user = await run_in_threadpool(_authenticate, request)
            data = bytearray()
            async for chunk in request.stream():
                data += chunk
                if len(data) > MAX_UPLOAD:
                    raise BrokerError("upload too large (over 1 GiB)", "trim the workdir (.brokerignore)", exit_code=2)
            uid = await run_in_threadpool(calls.extract_upload, user, bytes(data))
        except BrokerError as exc:
            return _error_response(exc)
        return {"value": wire.dump({"id": uid})}

    @app.post("/api/v1/call/{fn}")
    async def call(fn: str, request: Request):
        t0 = time.monotonic()
        seen = {"who": "-"}
        if int(request.headers.get("content-length") or 0) > MAX_CALL:
            return _error_response(BrokerError("request too large", "a task goes in the body, its files in "
                                               "an upload", exit_code=2))
        raw = await request.body()

        def prepare():  # one thread hop: authenticate, decode, authorize, and run a plain call
            user = _authenticate(request)
            seen["who"] = user.name
            check, run, stream = calls.lookup(fn)
            try:
                body = wire.load(json.loads(raw or b"{}"))
            except ValueError:
                raise wire.WireError("the request body is not JSON") from None
            args, kwargs = list(body.get("args") or []), dict(body.get("kwargs") or {})
            _as_user(user, check, user, args, kwargs)
            if stream is not None:
                return user, run, stream, args, kwargs, None
            value = _as_user(user, run, user, *args, **kwargs)
            return user, run, stream, args, kwargs, json.dumps({"value": wire.dump(value)}, separators=(",", ":"))

        try:
            user, run, stream, args, kwargs, answer = await run_in_threadpool(prepare)
            if stream is None:
                log(f"{user.name} {fn} 200 {1000 * (time.monotonic() - t0):.0f}ms")
                return Response(answer, media_type="application/json")
        except BrokerError as exc:
            log(f"{seen['who']} {fn} {http_status(exc)} {1000 * (time.monotonic() - t0):.0f}ms")
            return _error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: a readable 500, the traceback in the log
            return _error_response(_internal(exc))
        log(f"{user.name} {fn} stream")
        return StreamingResponse(_stream(user, fn, run, stream, args, kwargs), media_type="application/x-ndjson")


async def _stream(user, fn, run, stream: dict, args, kwargs):
    """Run the call in a thread, forwarding its callbacks as NDJSON lines, pinging while it is quiet."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    interrupted = threading.Event()

    def put(obj) -> None:
        if gone.is_set():
            if not interrupted.is_set():  # the client went away: what one Ctrl-C does locally, once,
                interrupted.set()         # so the rollback that follows runs to its end, quietly
                raise KeyboardInterrupt
            return
        loop.call_soon_threadsafe(q.put_nowait, obj)

    cbs = {}
    for param, kind in stream.items():
        if kind == calls.EV:
            cbs[param] = lambda k, m: put({"t": "event", "k": k, "m": m})
        elif kind == calls.LN:
            cbs[param] = lambda r, x: put({"t": "line", "r": r, "x": x})
        else:
            cbs[param] = lambda x: put({"t": "raw", "x": x})

    def work():
        try:
            value = _as_user(user, run, user, *args, **kwargs, **cbs)
            msg = {"t": "result", "v": wire.dump(value)}
        except BrokerError as exc:
            msg = {"t": "error", "e": wire.error_dict(exc)}
        except KeyboardInterrupt:
            msg = {"t": "error", "e": {"message": "the client went away", "hint": None, "exit_code": 130}}
        except Exception as exc:  # noqa: BLE001 - a bug: reported to the client, traceback in the log
            msg = {"t": "error", "e": wire.error_dict(_internal(exc))}
        state.close_thread_db()  # this thread ends here: its database connection too
        try:
            loop.call_soon_threadsafe(q.put_nowait, msg)
            loop.call_soon_threadsafe(q.put_nowait, None)
        except RuntimeError:  # the loop is closed (server shutting down)
            pass

    threading.Thread(target=work, name=f"call-{fn}", daemon=True).start()
    try:
        while True:
            try:
                item = await asyncio.wait_for(q.get(), PING_EVERY)
            except asyncio.TimeoutError:
                item = {"t": "ping"}
            if item is None:
                return
            yield json.dumps(item, separators=(",", ":")) + "\n"
    finally:
        gone.set()
