"""The web console at ``/console``: server-rendered pages (Starlette + Jinja2) over the same platform calls as the
API and the CLI. Every asset ships in the package; nothing loads from elsewhere.

Signing in: the console is a first-party OAuth client of the platform's own authorization server (code + PKCE,
``mcp-agent-console``), so it signs in through the same login page and auth providers as every other client, with
the same lockouts and audit. Its access and refresh tokens live in HttpOnly cookies scoped to ``/console``; a form
that changes something carries a CSRF token tied to the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import MCPAgentCloudError, ValidationFailed
from ..hookspecs.types import Identity
from .catalog import PublishBody, address, auth_of, is_public

HERE = Path(__file__).resolve().parent.parent / "console"
ACCESS, REFRESH, FLOW = "mcpac_console", "mcpac_console_refresh", "mcpac_console_flow"
# The message a form's redirect shows once. A cookie, not the query string: a link cannot make a console page
# show text of its author's choosing.
FLASH = "mcpac_console_flash"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
STATUSES = ("running", "paused", "completed", "error", "cancelled")


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["when"] = lambda ts: time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"
    env.filters["pct"] = lambda v: f"{v * 100:.1f}%" if v else "0%"
    return env


class Console:
    def __init__(self, platform, flows) -> None:
        self.platform, self.flows = platform, flows
        self.env = _templates()

    @property
    def oauth(self):
        return self.platform.oauth

    @property
    def secure(self) -> bool:
        return self.platform.config.base_url.startswith("https://")

    # -- the session --------------------------------------------------------------------------------------------

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/console", httponly=True, secure=self.secure,
                            samesite="lax")

    async def identity(self, request: Request) -> tuple[Identity | None, dict[str, str]]:
        """Who is signed in, refreshing the access token when it has expired; and the cookies to set then."""
        token = request.cookies.get(ACCESS, "")
        identity = await self.oauth.authenticate(token) if token else None
        if identity is not None:
            return identity, {}
        refresh = request.cookies.get(REFRESH)
        if not refresh:
            return None, {}
        from .oauth import CONSOLE_CLIENT_ID

        status, body = await self.oauth.token_request({"grant_type": "refresh_token", "refresh_token": refresh,
                                                       "client_id": CONSOLE_CLIENT_ID})
        if status != 200:
            return None, {}
        identity = await self.oauth.authenticate(body["access_token"])
        return identity, {ACCESS: body["access_token"], REFRESH: body.get("refresh_token", refresh)}

    def _flash(self, response: Response, kind: str, message: str) -> Response:
        value = base64.urlsafe_b64encode(json.dumps({kind: message[:2000]}).encode()).decode().rstrip("=")
        self._cookie(response, FLASH, value, 60)
        return response

    @staticmethod
    def _flashed(request: Request) -> dict[str, str]:
        try:
            value = request.cookies.get(FLASH, "")
            found = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        except ValueError:
            return {}
        return {k: v for k, v in found.items() if k in ("flash", "error") and isinstance(v, str)} \
            if isinstance(found, dict) else {}

    @staticmethod
    def csrf(request: Request) -> str:
        seed = request.cookies.get(REFRESH) or request.cookies.get(ACCESS) or ""
        return hashlib.sha256(b"console-csrf:" + seed.encode()).hexdigest()[:32]

    async def _checked_form(self, request: Request) -> dict[str, str]:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf(request)):
            raise ValidationFailed("this form has expired", hint="reload the page and try again")
        return form

    def render(self, request: Request, template: str, identity: Identity, status: int = 200, **ctx: Any) -> HTMLResponse:
        flashed = self._flashed(request)
        body = self.env.get_template(template).render(
            request=request, me=identity, can_write=identity.can("write"), can_admin=identity.can("admin"),
            csrf=self.csrf(request), flash=flashed.get("flash"), flash_error=flashed.get("error"),
            base_url=self.platform.config.base_url, **ctx)
        response = HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": CSP,
                                                                   "Cache-Control": "no-store",
                                                                   "X-Content-Type-Options": "nosniff",
                                                                   "Referrer-Policy": "same-origin"})
        if FLASH in request.cookies:  # shown once
            response.delete_cookie(FLASH, path="/console", httponly=True, secure=self.secure, samesite="lax")
        return response

    def page(self, handler, *, write: bool = False):
        """A console route: signed in (else to the login), the answer carrying refreshed cookies, and a platform
        error shown on the page it came from, as the CLI would print it."""
        async def route(request: Request) -> Response:
            identity, cookies = await self.identity(request)
            if identity is None:
                if request.method != "GET":
                    return PlainTextResponse("sign in first", status_code=401)
                return RedirectResponse("/console/login?" + urlencode({"next": request.url.path}), status_code=303)
            try:
                if write:
                    form = await self._checked_form(request)
                    response = await handler(request, identity, form)
                else:
                    response = await handler(request, identity)
            except MCPAgentCloudError as exc:
                if write:
                    back = request.headers.get("referer", "/console")
                    back = back if back.startswith(self.platform.config.base_url + "/console") else "/console"
                    return self._flash(RedirectResponse(back, status_code=303), "error",
                                       exc.message + (f" ({exc.hint})" if exc.hint else ""))
                response = self.render(request, "error.html", identity, status=exc.status, error=exc)
            for name, value in cookies.items():
                self._cookie(response, name, value, 30 * 86400)
            return response
        route.__name__ = handler.__name__
        return route

    # -- signing in and out -------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        from .oauth import CONSOLE_CLIENT_ID

        if self.oauth is None:
            return PlainTextResponse("the console signs in through the platform's OAuth server (oauth.enabled)",
                                     status_code=503)
        verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        nxt = request.query_params.get("next", "/console")
        nxt = nxt if nxt.startswith("/console") and not nxt.startswith("//") else "/console"
        query = {"response_type": "code", "client_id": CONSOLE_CLIENT_ID, "state": state,
                 "redirect_uri": f"{self.oauth.issuer}/console/callback", "code_challenge": challenge,
                 "code_challenge_method": "S256", "resource": self.oauth.api_audience, "scope": "api mcp"}
        response = RedirectResponse("/oauth/authorize?" + urlencode(query), status_code=303)
        self._cookie(response, FLOW, json.dumps({"state": state, "verifier": verifier, "next": nxt}), 600)
        return response

    async def callback(self, request: Request) -> Response:
        from .oauth import CONSOLE_CLIENT_ID

        try:
            flow = json.loads(request.cookies.get(FLOW, "{}"))
        except ValueError:
            flow = {}
        q = request.query_params
        if not flow.get("state") or not hmac.compare_digest(q.get("state", ""), flow["state"]):
            return PlainTextResponse("this sign-in has expired: start again at /console/login", status_code=400)
        if "code" not in q:
            return PlainTextResponse(f"signing in did not work: {q.get('error_description') or q.get('error')}",
                                     status_code=403)
        status, body = await self.oauth.token_request({
            "grant_type": "authorization_code", "code": q["code"], "client_id": CONSOLE_CLIENT_ID,
            "redirect_uri": f"{self.oauth.issuer}/console/callback", "code_verifier": flow["verifier"],
            "resource": self.oauth.api_audience})
        if status != 200:
            return PlainTextResponse(f"signing in did not work: {body.get('error_description', body)}",
                                     status_code=403)
        response = RedirectResponse(flow.get("next") or "/console", status_code=303)
        self._cookie(response, ACCESS, body["access_token"], 30 * 86400)
        self._cookie(response, REFRESH, body.get("refresh_token", ""), 30 * 86400)
        response.delete_cookie(FLOW, path="/console")
        return response

    async def logout(self, request: Request, identity: Identity, form: dict) -> Response:
        from .oauth import CONSOLE_CLIENT_ID

        if token := request.cookies.get(REFRESH):
            await self.oauth.revoke(token, CONSOLE_CLIENT_ID)  # the whole login's family goes
        response = RedirectResponse("/console/signed-out", status_code=303)
        for name in (ACCESS, REFRESH):
            response.delete_cookie(name, path="/console")
        return response

    async def signed_out(self, request: Request) -> Response:
        return HTMLResponse(self.env.get_template("signed_out.html").render(), headers={"Content-Security-Policy": CSP})

    # -- pages --------------------------------------------------------------------------------------------------

    async def overview(self, request: Request, identity: Identity) -> Response:
        platform = self.platform
        rows, hours = [], {}
        since = time.time() - 24 * 3600
        for record in sorted(await platform.registry.list_deployments(identity.org), key=lambda r: r.name):
            health = platform.health(record.org, record.name)
            usage = await platform.usage_of(record, since)
            for b in usage.buckets:
                h = hours.setdefault(b.bucket, [0, 0, 0.0])
                h[0] += b.calls
                h[1] += b.errors
                h[2] += (b.avg_ms or 0.0) * b.calls
            rows.append({"record": record, "health": health, "usage": usage, "public": is_public(record),
                         "endpoint": platform.endpoint(record), "auth": auth_of(record)})
        now = int(time.time()) // 3600 * 3600
        series = []  # (hour, calls, errors, mean ms) for the last 24 hours, oldest first
        for i in range(23, -1, -1):
            calls, errors, total_ms = hours.get(now - 3600 * i, (0, 0, 0.0))
            series.append((now - 3600 * i, calls, errors, round(total_ms / calls, 1) if calls else 0.0))
        return self.render(request, "overview.html", identity, rows=rows, series=series,
                           peak=max([c for _, c, _, _ in series] + [1]),
                           slowest=max([m for _, _, _, m in series] + [1.0]))

    async def deployment(self, request: Request, identity: Identity) -> Response:
        platform = self.platform
        record = await platform.find(identity, request.path_params["name"])
        status = await platform.status(record, identity)
        name = record.name if record.org == identity.org else f"{record.org}.{record.name}"
        try:
            secrets_list = (await platform.list_secrets(identity, name))["secrets"]
        except MCPAgentCloudError:  # a secrets backend that does not answer: the rest of the page still shows
            secrets_list = []
        client_config = json.dumps({"mcpServers": {record.name: {"type": "http", "url": status["endpoint"]}}},
                                   indent=2)
        await platform.collect_app_spans(f"{record.org}.{record.name}")
        traces = [spans[0] for spans in platform.span_store.traces(record.org, record.name, limit=10) if spans]
        usage = await platform.usage_of(record, time.time() - 7 * 86400)
        return self.render(request, "deployment.html", identity, record=record, s=status, name=name,
                           secrets=secrets_list, client_config=client_config, logs=self._log_tail(record),
                           traces=traces, usage=usage, public=is_public(record), address=address(record),
                           listing=record.spec.get("listing") or {})

    def _log_tail(self, record, lines: int = 200) -> str:
        from ..applog import tail_file

        path = self.platform.app_log(record.org, record.name, record.current_version or 1)
        try:
            return tail_file(path, lines)
        except OSError:
            return ""

    async def logs(self, request: Request, identity: Identity) -> Response:
        record = await self.platform.find(identity, request.path_params["name"])
        return PlainTextResponse(self._log_tail(record), headers={"Cache-Control": "no-store"})

    async def catalog(self, request: Request, identity: Identity) -> Response:
        q = request.query_params.get("q", "")
        entries = await self.platform.catalog.search(q)
        return self.render(request, "catalog.html", identity, entries=entries, q=q)

    async def runs(self, request: Request, identity: Identity) -> Response:
        status = request.query_params.get("status") or None
        if status not in (None, *STATUSES):
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}")
        out = await self.flows.all_runs(identity, status=status, workflow=None, limit=100)
        return self.render(request, "runs.html", identity, runs=out.get("runs", []), filter_status=status,
                           statuses=STATUSES, unreachable=out.get("unreachable") or [])

    # -- actions (forms) ----------------------------------------------------------------------------------------

    async def rollback(self, request: Request, identity: Identity, form: dict) -> Response:
        name = request.path_params["name"]
        result = await self.platform.rollback(identity, name, int(form["to"]) if form.get("to") else None)
        return self._back(name, f"serving version {result.get('version')}")

    async def publish(self, request: Request, identity: Identity, form: dict) -> Response:
        name = request.path_params["name"]
        body = {k: form[k] for k in ("description", "example") if form.get(k)}
        try:
            checked = PublishBody.model_validate(body)
        except ValueError as exc:
            raise ValidationFailed(f"invalid listing: {exc}") from None
        entry = await self.platform.catalog.publish(identity, name, checked)
        return self._back(name, f"public as {entry['address']}")

    async def unpublish(self, request: Request, identity: Identity, form: dict) -> Response:
        name = request.path_params["name"]
        await self.platform.catalog.unpublish(identity, name, force=form.get("force") == "1")
        return self._back(name, "private again")

    async def delete(self, request: Request, identity: Identity, form: dict) -> Response:
        name = request.path_params["name"]
        await self.platform.delete_deployment(identity, name, force=form.get("force") == "1")
        return self._flash(RedirectResponse("/console", status_code=303), "flash", f"deleted {name}")

    async def run_action(self, request: Request, identity: Identity, form: dict) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        if action not in ("resume", "cancel"):
            raise ValidationFailed("the console resumes or cancels runs")
        payload = None
        if form.get("payload", "").strip():
            try:
                payload = json.loads(form["payload"])
            except ValueError:
                payload = form["payload"]  # plain text is a fine answer to a human-input question
        await self.flows.run_action(identity, run_id, action, signal=form.get("signal") or None, payload=payload)
        return self._flash(RedirectResponse("/console/runs", status_code=303), "flash", f"{action}: {run_id}")

    def _back(self, name: str, flash: str) -> Response:
        return self._flash(RedirectResponse(f"/console/deployments/{name}", status_code=303), "flash", flash)

    def routes(self) -> list:
        page, write = self.page, (lambda h: self.page(h, write=True))

        async def catalog_address(request: Request) -> Response:  # the catalog's short address
            return RedirectResponse("/console/catalog", status_code=307)

        return [Route("/catalog", catalog_address), Mount("/console", routes=[
            Route("/", page(self.overview)),
            Route("/login", self.login),
            Route("/callback", self.callback),
            Route("/signed-out", self.signed_out),
            Route("/logout", write(self.logout), methods=["POST"]),
            Route("/catalog", page(self.catalog)),
            Route("/runs", page(self.runs)),
            Route("/runs/{run_id}/{action}", write(self.run_action), methods=["POST"]),
            Route("/deployments/{name}", page(self.deployment)),
            Route("/deployments/{name}/logs", page(self.logs)),
            Route("/deployments/{name}/rollback", write(self.rollback), methods=["POST"]),
            Route("/deployments/{name}/publish", write(self.publish), methods=["POST"]),
            Route("/deployments/{name}/unpublish", write(self.unpublish), methods=["POST"]),
            Route("/deployments/{name}/delete", write(self.delete), methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="console-static"),
        ])]
