"""A local stand-in for GitHub's OAuth and REST API, for the github provider's contract test: GitHub cannot be
reached from the machines the tests run on. It follows GitHub's documented requests and answers, and is strict
where GitHub is:

- the web flow (docs: "Authorizing OAuth apps"): ``GET /login/oauth/authorize`` redirects to the app's callback
  with ``code`` and ``state``; ``POST /login/oauth/access_token`` takes ``client_id``, ``client_secret``, ``code``,
  ``redirect_uri`` and the PKCE ``code_verifier``;
- the device flow: ``POST /login/device/code`` answers ``device_code``, ``user_code``, ``verification_uri``,
  ``expires_in``, ``interval``; polling answers ``authorization_pending``, ``slow_down`` (with a new ``interval``),
  ``expired_token``, ``access_denied`` or ``incorrect_device_code``;
- token answers are form-encoded unless the request says ``Accept: application/json``, and token errors come with
  HTTP 200 (``bad_verification_code``, ``incorrect_client_credentials``, ``redirect_uri_mismatch``);
- the REST API (``/api`` here, ``api.github.com`` there): ``GET /user``, ``GET /user/orgs``, ``GET /user/teams``
  (paged with ``per_page`` and a ``Link: rel="next"`` header), ``401 Bad credentials`` for a bad token.

The signed-in GitHub user of a browser is the ``gh_user`` cookie (the test sets it, as logging in at github.com
would).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import threading
import time
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DOCS = "https://docs.github.com/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps"


class FakeGitHub:
    def __init__(self, client_id: str, client_secret: str, callback: str, users: dict[str, dict],
                 interval: int = 1) -> None:
        self.client_id, self.client_secret, self.callback = client_id, client_secret, callback
        self.users = users  # login -> {"orgs": [...], "teams": [(org, slug), ...]}
        self.interval = interval
        self.codes: dict[str, dict] = {}
        self.devices: dict[str, dict] = {}
        self.tokens: dict[str, str] = {}  # access token -> login
        self.requests: list[tuple[str, str, str]] = []  # (method, path, accept)
        self.url = ""

    # -- helpers ------------------------------------------------------------------------------------------------

    def _token_answer(self, request: Request, body: dict) -> Response:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(body)
        return PlainTextResponse(urlencode(body), media_type="application/x-www-form-urlencoded")

    def _error(self, request: Request, error: str, description: str, **extra) -> Response:
        return self._token_answer(request, {"error": error, "error_description": description,
                                            "error_uri": f"{DOCS}#{error}", **extra})

    def _issue(self, login: str) -> dict:
        token = "gho_" + secrets.token_urlsafe(27)
        self.tokens[token] = login
        return {"access_token": token, "token_type": "bearer", "scope": "read:org,read:user,user:email"}

    def _user_of(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None

    # -- web flow -----------------------------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id:
            return PlainTextResponse("Not Found", status_code=404)
        login = request.cookies.get("gh_user")
        if login not in self.users:
            return PlainTextResponse("Sign in to GitHub", status_code=200)  # the login page a person would see
        redirect = q.get("redirect_uri") or self.callback
        if not redirect.startswith(self.callback):
            return RedirectResponse(f"{self.callback}?{urlencode({'error': 'redirect_uri_mismatch', 'state': q.get('state', '')})}")
        code = secrets.token_hex(10)
        self.codes[code] = {"login": login, "redirect_uri": redirect, "challenge": q.get("code_challenge"),
                            "expires": time.time() + 600}
        return RedirectResponse(f"{redirect}?{urlencode({'code': code, 'state': q.get('state', '')})}", 302)

    async def access_token(self, request: Request) -> Response:
        self.requests.append(("POST", "/login/oauth/access_token", request.headers.get("accept", "")))
        form = dict(await request.form())
        if form.get("grant_type") == DEVICE_GRANT:
            return self._device_poll(request, form)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._error(request, "incorrect_client_credentials",
                               "The client_id and/or client_secret passed are incorrect.")
        grant = self.codes.pop(str(form.get("code", "")), None)
        if grant is None or grant["expires"] < time.time():
            return self._error(request, "bad_verification_code", "The code passed is incorrect or expired.")
        if form.get("redirect_uri") and form["redirect_uri"] != grant["redirect_uri"]:
            return self._error(request, "redirect_uri_mismatch", "The redirect_uri MUST match the registered "
                                                                  "callback URL for this application.")
        if grant["challenge"]:
            verifier = str(form.get("code_verifier", ""))
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if digest != grant["challenge"]:
                return self._error(request, "bad_verification_code", "The code_verifier does not match.")
        return self._token_answer(request, self._issue(grant["login"]))

    # -- device flow --------------------------------------------------------------------------------------------

    async def device_code(self, request: Request) -> Response:
        form = dict(await request.form())
        if form.get("client_id") != self.client_id:
            return JSONResponse({"error": "Not Found"}, status_code=404)
        device_code = secrets.token_hex(20)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self.devices[device_code] = {"user_code": user_code, "login": None, "denied": False, "last": 0.0,
                                     "interval": self.interval, "expires": time.time() + 900}
        return self._token_answer(request, {"device_code": device_code, "user_code": user_code,
                                            "verification_uri": f"{self.url}/login/device", "expires_in": 900,
                                            "interval": self.interval})

    async def device_page(self, request: Request) -> Response:
        """The user enters the code at /login/device while signed in (the gh_user cookie)."""
        form = dict(await request.form())
        login = request.cookies.get("gh_user")
        found = next((d for d in self.devices.values() if d["user_code"] == form.get("user_code")), None)
        if found is None or login not in self.users:
            return PlainTextResponse("unknown code", status_code=404)
        if form.get("action") == "cancel":
            found["denied"] = True
        else:
            found["login"] = login
        return PlainTextResponse("Congratulations, you're all set!")

    def _device_poll(self, request: Request, form: dict) -> Response:
        device = self.devices.get(str(form.get("device_code", "")))
        if form.get("client_id") != self.client_id or device is None:
            return self._error(request, "incorrect_device_code", "The device_code provided is not valid.")
        if device["expires"] < time.time():
            return self._error(request, "expired_token", "The device_code has expired.")
        now = time.time()
        if now - device["last"] < device["interval"] - 0.2:
            device["interval"] += 5
            device["last"] = now
            return self._error(request, "slow_down", "Too many requests have been made in the same timeframe.",
                               interval=device["interval"])
        device["last"] = now
        if device["denied"]:
            return self._error(request, "access_denied", "The authorization request was denied.")
        if device["login"] is None:
            return self._error(request, "authorization_pending", "The authorization request is still pending.")
        del self.devices[str(form["device_code"])]
        return self._token_answer(request, self._issue(device["login"]))

    # -- REST API -----------------------------------------------------------------------------------------------

    def _api(self, fn):
        async def endpoint(request: Request) -> Response:
            login = self._user_of(request)
            if login is None:
                return JSONResponse({"message": "Bad credentials", "documentation_url":
                                     "https://docs.github.com/rest", "status": "401"}, status_code=401)
            return fn(request, login)
        return endpoint

    def _paged(self, request: Request, items: list) -> Response:
        per_page = min(int(request.query_params.get("per_page", 30)), 100)
        page = int(request.query_params.get("page", 1))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            headers["Link"] = f'<{self.url}/api{request.url.path[4:]}?per_page={per_page}&page={page + 1}>; rel="next"'
        return JSONResponse(chunk, headers=headers)

    def user(self, request: Request, login: str) -> Response:
        return JSONResponse({"login": login, "id": abs(hash(login)) % 10**7, "type": "User",
                             "name": login.title(), "email": None})

    def orgs(self, request: Request, login: str) -> Response:
        return self._paged(request, [{"login": o, "id": i + 1, "url": f"{self.url}/api/orgs/{o}"}
                                     for i, o in enumerate(self.users[login].get("orgs", []))])

    def teams(self, request: Request, login: str) -> Response:
        return self._paged(request, [{"id": i + 1, "slug": slug, "name": slug.title(),
                                      "organization": {"login": org, "id": 1}}
                                     for i, (org, slug) in enumerate(self.users[login].get("teams", []))])

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/login/oauth/authorize", self.authorize, methods=["GET"]),
            Route("/login/oauth/access_token", self.access_token, methods=["POST"]),
            Route("/login/device/code", self.device_code, methods=["POST"]),
            Route("/login/device", self.device_page, methods=["POST"]),
            Route("/api/user", self._api(self.user), methods=["GET"]),
            Route("/api/user/orgs", self._api(self.orgs), methods=["GET"]),
            Route("/api/user/teams", self._api(self.teams), methods=["GET"]),
        ])


@contextlib.contextmanager
def serving(fake: FakeGitHub, port: int):
    """Serve the stand-in on 127.0.0.1:port in a thread."""
    import uvicorn

    fake.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    server.capture_signals = contextlib.nullcontext  # the test process keeps its own signal handlers
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the GitHub stand-in did not start")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)
