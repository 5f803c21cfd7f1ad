"""Until a visitor has logged in, the studio answers with the login form and nothing else.

Gradio's own login page embeds the whole API description (endpoint names, defaults, server
paths, run ids) and a few of its routes answer without a session. `LoginGate`, an ASGI
middleware on the app Gradio builds, sits in front of every route while a password is set:
without a valid session it renders the login page from Gradio's template with an empty config,
lets through the form's static files and `POST /login`, and answers everything else 401.
It also slows down password guessing per client (`LoginThrottle`) and logs every failed login.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

logger = logging.getLogger("studio.login")

LOGIN_PATHS = frozenset({"/login", "/login/"})
# Gradio's own frontend build (scripts, styles, fonts) and the theme's colours: the login form
# needs them, they hold no data. startup-events is what `launch` itself calls, without a
# session, before it returns (it answers a boolean).
PUBLIC_PATHS = frozenset({"/favicon.ico", "/manifest.json", "/theme.css", "/gradio_api/startup-events"})
PUBLIC_PREFIXES = ("/assets/", "/static/")
EMPTY_API_INFO = {"named_endpoints": {}, "unnamed_endpoints": {}}


class LoginThrottle:
    """Per-client backoff on failed logins.

    The first `free` failures cost nothing; after that each attempt must wait `base_s · 2^k`
    seconds (k = failures beyond `free`, capped at `max_s`) after the last failure, else it is
    refused. A client's failures are forgotten `forget_s` after its last one, or on success.
    """

    def __init__(self, free: int = 5, base_s: float = 1.0, max_s: float = 300.0,
                 forget_s: float = 900.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.free, self.base_s, self.max_s, self.forget_s = free, base_s, max_s, forget_s
        self.max_clients, self.clock = max_clients, clock
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (failures, time of the last)

    def failures(self, client: str) -> int:
        return self._current(client)[0]

    def retry_after(self, client: str) -> float:
        """Seconds the client must still wait before its next attempt (0: it may try now)."""
        count, last = self._current(client)
        if count < self.free:
            return 0.0
        wait = min(self.base_s * 2 ** (count - self.free), self.max_s)
        return max(0.0, last + wait - self.clock())

    def failed(self, client: str) -> int:
        """Record one failure; returns the client's failures so far."""
        count = self._current(client)[0] + 1
        self._failures[client] = (count, self.clock())
        if len(self._failures) > self.max_clients:
            self._forget_stale()
        return count

    def forgive(self, client: str) -> None:
        """Undo one recorded failure (the attempt turned out not to be a password check)."""
        count, last = self._current(client)
        if count <= 1:
            self._failures.pop(client, None)
        else:
            self._failures[client] = (count - 1, last)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _current(self, client: str) -> tuple[int, float]:
        count, last = self._failures.get(client, (0, 0.0))
        if count and self.clock() - last > self.forget_s:
            del self._failures[client]
            return 0, 0.0
        return count, last

    def _forget_stale(self) -> None:
        # Bounded memory under a spray of client addresses: drop the stale, then the oldest.
        now = self.clock()
        fresh = sorted(((last, client, count) for client, (count, last) in self._failures.items()
                        if now - last <= self.forget_s), reverse=True)[: self.max_clients // 2]
        self._failures = {client: (count, last) for last, client, count in fresh}


def route_path(scope: Scope) -> str:
    """The path the app routes on (without a proxy's root path, where the server includes it)."""
    path, root = scope.get("path", "/"), (scope.get("root_path") or "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    return path


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def logged_in_user(app, scope: Scope) -> str | None:
    """The user of the request's session cookie, exactly as Gradio looks it up."""
    cookies = Request(scope).cookies
    token = (cookies.get(f"access-token-{app.cookie_id}")
             or cookies.get(f"access-token-unsecure-{app.cookie_id}"))
    return app.tokens.get(token) if token else None


def login_page(app, scope: Scope):
    """Gradio's page template with only what its login form reads: no components, no API."""
    from gradio import route_utils
    from gradio.routes import templates

    request = Request(scope)
    blocks = app.get_blocks()
    root = route_utils.get_root_url(request=request, route_path="/",
                                    root_path=app.root_path or scope.get("root_path") or blocks.custom_mount_path)
    config = {"auth_required": True, "auth_message": blocks.auth_message, "space_id": None, "root": root,
              "page": {"": {"layout": {}}}, "pages": [""], "components": [], "dependencies": [],
              "current_page": ""}
    template = "frontend/share.html" if blocks.share else "frontend/index.html"
    return templates.TemplateResponse(request=request, name=template,
                                      context={"config": config, "gradio_api_info": EMPTY_API_INFO})


class LoginGate:
    """ASGI middleware: pass a logged-in visitor through, give anyone else only the login form."""

    def __init__(self, app: ASGIApp, throttle: LoginThrottle | None = None):
        self.app = app
        self.throttle = throttle or LoginThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        studio = scope.get("app")
        if scope["type"] not in ("http", "websocket") or getattr(studio, "auth", None) is None:
            await self.app(scope, receive, send)  # lifespan, or a studio without a password
            return
        path = route_path(scope)
        if path in LOGIN_PATHS and scope["type"] == "http":
            await self._login(scope, receive, send)
        elif logged_in_user(studio, scope) is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose(code=1008)(scope, receive, send)
        elif path == "/" and scope["method"] in ("GET", "HEAD"):
            await login_page(studio, scope)(scope, receive, send)
        elif path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
        else:
            await JSONResponse({"detail": {"error": "Not authenticated"}}, status_code=401)(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = client_address(scope)
        wait = self.throttle.retry_after(client)
        if wait > 0:
            seconds = math.ceil(wait)
            response = JSONResponse(
                {"detail": f"Too many failed logins from {client}: try again in {seconds} s."},
                status_code=429, headers={"Retry-After": str(seconds)})
            await response(scope, receive, send)
            return
        # Counted before the password is checked, so that guesses sent in parallel cannot all
        # pass the check above before the first of them has failed.
        failures = self.throttle.failed(client)
        status: list[int] = []

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, record_status)
        code = status[0] if status else 500
        if 200 <= code < 300:
            self.throttle.succeeded(client)
        elif code in (400, 401):
            wait = math.ceil(self.throttle.retry_after(client))
            logger.warning("failed login from %s (%d in a row%s)", client, failures,
                           f"; further attempts refused for {wait} s" if wait else "")
        else:
            self.throttle.forgive(client)  # a malformed request, not a password guess


def gate_middleware() -> list:
    """`app_kwargs["middleware"]` for `launch`: the gate in front of every Gradio route."""
    from starlette.middleware import Middleware

    return [Middleware(LoginGate)]

