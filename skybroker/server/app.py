"""The broker server: an ASGI app (FastAPI, served by uvicorn) in front of api.py's use cases.

    GET  /api/v1/health        no token: {"ok", "version"}
    GET  /api/v1/whoami        {"name", "admin"}
    POST /api/v1/call/<fn>     one use case (calls.py: authorization, then the work); see client/http.py
                               for the request and the two answer shapes (JSON, or an NDJSON stream)
    POST /api/v1/upload        a task's local sources (tar.gz) → {"id"}
    GET  /dashboard            server-rendered HTML (dashboard.py), the token as a cookie or header

Every request but health carries `Authorization: Bearer TOKEN` (users.py); the token is looked up on
each request, so a revoked token stops working at once. Work runs in threads (the state layer and the
clouds' SDKs are synchronous); a stream's thread gets KeyboardInterrupt as soon as the client went away
(interrupts.py; also when the call is quiet, e.g. following a silent job), which is what Ctrl-C does
locally (a launch rolls back, a follow stops and ends its followers on the nodes).

Logs: one line per call (time, user, call, HTTP status, duration): never arguments, bodies or tokens.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import traceback

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__, state, state_db, users, wire
from ..errors import AuthError, BrokerError, ForbiddenError
from . import cache as cache_mod, calls

PING_EVERY = 5.0
MAX_UPLOAD = wire.MAX_UPLOAD
CPU_BOUND_AT_ONCE = 2  # calls.CPU_BOUND running at once in one server process
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
    user = None if local else _cached_user(token)
    if user is None:
        raise AuthError("the server does not accept this token (unknown or revoked)",
                        "ask an admin for a new one, then `broker login URL --token TOKEN`")
    return user


def _encode(value) -> bytes:
    return json.dumps({"value": wire.dump(value)}, separators=(",", ":")).encode()


def _cached_user(token: str):
    rc = cache_mod.CACHE
    if rc is None:
        return users.authenticate(token)
    d = users.digest(token)
    user = rc.user(d)
    if user is None:
        snap = rc.snapshot(("users",))
        user = users.authenticate(token)
        if user is not None:
            rc.put_user(d, snap, user)
    return user


def _as_user(user, fn, *args, **kwargs):
    tok = state.current_user.set(user.name)
    caller = state.current_caller.set((user.name, bool(user.admin)))
    try:
        return fn(*args, **kwargs)
    finally:
        state.current_caller.reset(caller)
        state.current_user.reset(tok)


@contextlib.asynccontextmanager
async def _lifespan(app):
    yield
    if _CALLS:  # stopping (SIGTERM, Ctrl-C): what a stop does to a local launch, before the process ends
        log(f"stopping: interrupting {len(_CALLS)} running call(s) (a launch rolls back) and waiting for them")
        left = await anyio.to_thread.run_sync(finish_calls, SHUTDOWN_WAIT)
        if left:
            log(f"{left} call(s) still running after {SHUTDOWN_WAIT:.0f}s: `broker status` shows what they left")


def create_app(local_token: str | None = None) -> FastAPI:
    """The server's app. With `local_token` (`broker dashboard`): that one token only, no users table."""
    app = FastAPI(title="skybroker", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan)
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
        _start_cache()

    @app.post("/dashboard/login")
    async def dashboard_login(request: Request):
        from urllib.parse import parse_qs

        from fastapi.responses import RedirectResponse

        from . import dashboard as dash

        token = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0].strip()
        try:
            ok = token == request.app.state.local_token if request.app.state.local_token else \
                await run_in_threadpool(users.authenticate, token) is not None
        except BrokerError as exc:  # the users table cannot be read
            return HTMLResponse(dash.error_page(exc), status_code=http_status(exc))
        if not ok:
            return HTMLResponse(dash.login_page("the server does not accept this token"), status_code=401)
        resp = RedirectResponse("/dashboard", status_code=303)
        resp.set_cookie("broker_token", token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @app.api_route("/dashboard/plan", methods=["GET", "POST"])
    async def dashboard_plan(request: Request):
        from urllib.parse import parse_qs

        from . import dashboard as dash

        try:
            user = await run_in_threadpool(_authenticate, request)
        except AuthError as exc:
            return HTMLResponse(dash.login_page(exc.message))
        except BrokerError as exc:
            return HTMLResponse(dash.error_page(exc), status_code=http_status(exc))
        text = None
        if request.method == "POST":
            if int(request.headers.get("content-length") or 0) > 4 * dash.MAX_PASTE:
                return HTMLResponse(dash.plan_page(user, ""), status_code=413)
            raw = await request.body()
            text = (parse_qs(raw.decode("utf-8", "replace")).get("task") or [""])[0]
        html = await anyio.to_thread.run_sync(_as_user, user, dash.plan_page, user, text, limiter=_cpu_limiter())
        return HTMLResponse(html)

    @app.get("/dashboard")
    def dashboard(request: Request):
        from . import dashboard as dash

        try:
            user = _authenticate(request)
        except AuthError as exc:
            return HTMLResponse(dash.login_page(exc.message))  # a page to sign in on, not an API error
        except BrokerError as exc:  # e.g. StateError: the users table cannot be read
            return HTMLResponse(dash.error_page(exc), status_code=http_status(exc))
        try:
            return HTMLResponse(_as_user(user, dash.page, user))
        except BrokerError as exc:  # e.g. StateError (a corrupt state database): its message and hint
            return HTMLResponse(dash.error_page(exc, user), status_code=http_status(exc))

    return FastReads(app) if local_token is None else app


def _start_cache() -> None:
    if cache_mod.CACHE is None:
        url = state.db_url()
        if not url:
            state.db()  # the SQLite file exists (and is migrated) before the cache opens it
        cache_mod.CACHE = cache_mod.ReadCache(url or None, None if url else str(state.db_path()))
        if url:
            from .. import db_pg

            db_pg.on_write = cache_mod.CACHE.bump


class FastReads:
    """In front of the FastAPI app: a cached answer to a frequent read (calls.CACHED) is sent from the
    event loop at once (no thread hop, no framework); anything else, and every miss, goes to the app."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.state = app.state
        self.pending: dict[tuple, asyncio.Future] = {}  # answers being recomputed (one request each)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/api/v1/call/"):
            return await self.app(scope, receive, send)
        fn = scope["path"][len("/api/v1/call/"):]
        rc = cache_mod.CACHE
        if fn not in calls.CACHED or rc is None or not rc.on:
            return await self.app(scope, receive, send)
        t0 = time.monotonic()
        chunks, size, more = [], 0, True
        while more and size <= MAX_CALL:  # beyond that the app answers "request too large"
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
        raw = b"".join(chunks)
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        body = key = user = None
        if header[:7].lower() == "bearer " and not more:
            d = users.digest(header[7:].strip())
            user = rc.user(d)
            if user is not None:
                key, tables = (fn, d, raw), calls.CACHED[fn][0] + ("users",)
                body = rc.answer(key, tables, daemons_mod().is_leader())
                if body is None and key in self.pending:  # being recomputed: wait for that answer
                    await asyncio.shield(self.pending[key])
                    body = rc.answer(key, tables, daemons_mod().is_leader())
        if body is None:
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": raw, "more_body": more}
                return await receive()

            if key is None or key in self.pending:
                return await self.app(scope, replay, send)
            self.pending[key] = asyncio.get_running_loop().create_future()
            try:
                return await self.app(scope, replay, send)
            finally:
                self.pending.pop(key).set_result(None)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        log(f"{user.name} {fn} 200 {1000 * (time.monotonic() - t0):.0f}ms cached")


_CPU = []


def _cpu_limiter():
    if not _CPU:
        _CPU.append(anyio.CapacityLimiter(CPU_BOUND_AT_ONCE))
    return _CPU[0]


def daemons_mod():
    from . import daemons

    return daemons


def _api_routes(app: FastAPI) -> None:
    @app.post("/api/v1/upload")
    async def upload(request: Request):
        try:
            user = await run_in_threadpool(_authenticate, request)
            import tempfile

            # spooled to a temp file past 8 MiB: an upload is never held in memory whole
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as data:
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_UPLOAD:
                        raise BrokerError("upload too large (over 1 GiB)", "trim the workdir (.brokerignore)",
                                          exit_code=2)
                    data.write(chunk)
                data.seek(0)
                uid = await run_in_threadpool(calls.extract_upload, user, data)
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
            if not isinstance(body, dict) or not isinstance(body.get("args") or [], list) or \
                    not isinstance(body.get("kwargs") or {}, dict):
                raise wire.WireError("the request body is not {args: [...], kwargs: {...}}")
            args, kwargs = calls.bind(fn, run, stream, list(body.get("args") or []), dict(body.get("kwargs") or {}))
            _as_user(user, check, user, args, kwargs)
            if stream is not None:
                return user, run, stream, args, kwargs, None
            rc, cached = cache_mod.CACHE, calls.CACHED.get(fn)
            header = request.headers.get("authorization", "")
            if rc is None or cached is None or not header.lower().startswith("bearer "):
                value = _as_user(user, run, user, *args, **kwargs)
                return user, run, stream, args, kwargs, _encode(value)
            key, tables = (fn, users.digest(header[7:].strip()), raw), cached[0] + ("users",)
            with rc.flight(key):
                leader = daemons_mod().is_leader()
                answer = rc.answer(key, tables, leader)  # computed meanwhile by the request we waited for
                if answer is None:
                    snap = rc.snapshot(tables)  # before the read: a write during it makes the answer stale
                    value = _as_user(user, run, user, *args, **kwargs)
                    answer = _encode(value)
                    if cached[1](args, kwargs, value):
                        rc.put_answer(key, snap, answer, leader)
            return user, run, stream, args, kwargs, answer

        try:
            if fn in calls.CPU_BOUND:  # a few at a time: the rest wait without taking the GIL from the reads
                user, run, stream, args, kwargs, answer = await anyio.to_thread.run_sync(
                    prepare, limiter=_cpu_limiter())
            else:
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


SHUTDOWN_WAIT = 60.0  # how long a stopping server waits for its interrupted calls (a launch's rollback)
_CALLS: dict[threading.Thread, object] = {}  # this process's running stream calls → how to interrupt one


def finish_calls(timeout: float) -> int:
    """Interrupt every running stream call, as the client going away does, and wait up to `timeout` for
    them to end. Returns how many still run."""
    running = list(_CALLS.items())
    for worker, interrupt_once in running:
        interrupt_once(worker)
    deadline = time.monotonic() + timeout
    for worker, _ in running:
        worker.join(max(0.0, deadline - time.monotonic()))
    return sum(w.is_alive() for w, _ in running)


async def _stream(user, fn, run, stream: dict, args, kwargs):
    """Run the call in a thread, forwarding its callbacks as NDJSON lines, pinging while it is quiet."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    interrupted, finished, once = threading.Event(), threading.Event(), threading.Lock()

    def interrupt_once(thread=None) -> bool:  # the client went away: what one Ctrl-C does locally, once,
        with once:                            # so the rollback that follows runs to its end, quietly
            if interrupted.is_set() or finished.is_set():
                return False
            interrupted.set()
            if thread is not None:  # under the lock: never once the call has returned
                from ..interrupts import interrupt

                interrupt(thread)
            return True

    def put(obj) -> None:
        if gone.is_set():
            if interrupt_once():
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

    went_away = {"t": "error", "e": {"message": "the client went away", "hint": None, "exit_code": 130}}

    def work():
        msg = went_away
        try:
            try:
                value = _as_user(user, run, user, *args, **kwargs, **cbs)
                msg = {"t": "result", "v": wire.dump(value)}
            except BrokerError as exc:
                msg = {"t": "error", "e": wire.error_dict(exc)}
            except KeyboardInterrupt:
                msg = went_away
            except Exception as exc:  # noqa: BLE001 - a bug: reported to the client, traceback in the log
                msg = {"t": "error", "e": wire.error_dict(_internal(exc))}
            with once:
                finished.set()
        except KeyboardInterrupt:  # interrupted just as the call returned: its answer stands
            finished.set()
        _CALLS.pop(threading.current_thread(), None)
        state_db.close_thread_db()  # this thread ends here: its database connection too
        try:
            loop.call_soon_threadsafe(q.put_nowait, msg)
            loop.call_soon_threadsafe(q.put_nowait, None)
        except RuntimeError:  # the loop is closed (server shutting down)
            pass

    worker = threading.Thread(target=work, name=f"call-{fn}", daemon=True)
    _CALLS[worker] = interrupt_once
    worker.start()
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
        interrupt_once(worker)  # gone while the call is quiet (a silent job followed): interrupted now,
        # not at its next output, hours later
