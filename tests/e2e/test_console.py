"""The web console in a real browser: Debian's headless Chromium driven by Playwright (its system executable; no
browser is downloaded). An owner signs in through the platform's login page, sees a deployment, copies its URL,
opens its logs, resumes a paused workflow run with input and sees it complete, publishes a deployment and finds it
in the catalog, and is refused the delete of a server another app uses. A viewer sees no deploy, delete or resume
controls, and the API refuses those too. Screenshots of the main pages go to the test's output folder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, PlatformProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group("console")]

HELLO = ROOT / "examples" / "hello"
FLOWS = ROOT / "tests" / "apps" / "workflows_app"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def con(tmp_path_factory, shared_envs):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/setup.sh installs Debian's chromium package (apt-get install "
                    "chromium)")
    p = PlatformProcess(tmp_path_factory.mktemp("console"), shared_envs)
    p.start()
    try:
        for user, role in (("olga", "owner"), ("vic", "viewer")):
            p.cli("admin", "users", "add", user, "--org", "default", "--role", role, "--password-stdin",
                  input=PASSWORD, check=True)
        p.cli_json("deploy", "app", str(HELLO), "--name", "greeter")
        p.cli_json("deploy", "app", str(HELLO), "--name", "greeter", "--env", "GREETING_STYLE=loud")  # version 2
        p.cli_json("deploy", "app", str(FLOWS), "--name", "flows")
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                            "--disable-component-update", "--no-first-run"])
        yield chromium
        chromium.close()


def signed_in(browser, p: PlatformProcess, user: str):
    context = browser.new_context(base_url=p.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=p.url)
    page = context.new_page()
    page.goto("/console/")
    # Not signed in: the console sends the browser to the platform's own login page.
    assert "/oauth/authorize" in page.url and page.get_by_role("heading", name="Sign in to the console").is_visible()
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{p.url}/console/")
    return context, page


def accessible(page) -> None:
    """What a screen reader and a keyboard need: a label for every field, a name for every button and link, one
    main landmark, and a page language."""
    problems = page.evaluate("""() => {
        const out = [];
        for (const el of document.querySelectorAll("input:not([type=hidden]), textarea, select")) {
            if (!el.labels?.length && !el.getAttribute("aria-label")) out.push("unlabelled " + el.outerHTML);
        }
        for (const el of document.querySelectorAll("button, a[href]")) {
            if (!(el.getAttribute("aria-label") || el.textContent).trim()) out.push("unnamed " + el.outerHTML);
        }
        if (document.querySelectorAll("main").length !== 1) out.push("not one main landmark");
        if (!document.documentElement.lang) out.push("no lang");
        return out;
    }""")
    assert problems == [], problems


def test_an_owner_works_through_the_console(con, browser, tmp_path):
    p = con
    context, page = signed_in(browser, p, "olga")
    try:
        assert page.get_by_role("heading", name="Deployments of default").is_visible()
        accessible(page)
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        row = page.get_by_role("row").filter(has_text="greeter")
        assert row.get_by_text("private").is_visible() and row.get_by_text("running").is_visible()
        # Copy its endpoint URL to the clipboard.
        row.get_by_role("button", name="Copy the endpoint of greeter").click()
        assert page.evaluate("navigator.clipboard.readText()") == f"{p.url}/servers/greeter/mcp"

        # Its page: the client config, and the log, live.
        row.get_by_role("link", name="greeter").click()
        assert page.get_by_role("heading", name="Connect an MCP client").is_visible()
        config = json.loads(page.locator("#client-config").text_content())
        assert config["mcpServers"]["greeter"]["url"] == f"{p.url}/servers/greeter/mcp"
        p.api("POST", "/servers/greeter/call_tool", json={"name": "greet", "arguments": {"name": "console"}})
        accessible(page)
        page.get_by_label("Live tail").check()
        wait_for(lambda: "starting version 2" in page.locator("#logs").text_content(), what="the log tail")
        page.screenshot(path=str(tmp_path / "deployment.png"), full_page=True)

        # Roll back to version 1 from its history.
        page.get_by_role("button", name="Roll back to 1").click()
        assert page.get_by_role("status").text_content() == "serving version 1"
        assert p.cli_json("status", "greeter")["serving_version"] == 1

        # Publish it, and find it in the catalog.
        page.get_by_label("Description").fill("Greets whoever asks")
        page.get_by_role("button", name="Publish as @default/greeter").click()
        assert page.get_by_role("status").text_content() == "public as @default/greeter"
        page.get_by_role("link", name="Catalog").click()
        page.get_by_label("Search public servers and apps").fill("greets")
        page.get_by_role("button", name="Search").click()
        assert page.get_by_role("heading", name="@default/greeter").is_visible()
        assert page.get_by_text("Greets whoever asks").is_visible()
        accessible(page)
        # From the keyboard: the copy button, focused, works with Enter.
        copy = page.get_by_role("button", name="Copy the endpoint of @default/greeter")
        copy.focus()
        page.keyboard.press("Enter")
        assert page.evaluate("navigator.clipboard.readText()") == f"{p.url}/servers/@default/greeter/mcp"
        assert page.request.get("/catalog", max_redirects=0).headers["location"] == "/console/catalog"
        page.screenshot(path=str(tmp_path / "catalog.png"), full_page=True)

        # Another org's app uses it: the delete is refused, and says who depends on it.
        acme = p.cli_json("admin", "token", "--org", "acme", "--role", "owner")["token"]
        p.cli_json("deploy", "app", str(HELLO), "--name", "front", "--use", "@default/greeter",
                   env={"MCP_AGENT_CLOUD_TOKEN": acme})
        page.goto("/console/deployments/greeter")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete greeter").click()
        alert = page.get_by_role("alert")
        assert "public and in use: 1 deployment of org acme" in alert.text_content()
        assert p.api("GET", "/api/v1/deployments/greeter").status_code == 200
        # A message is shown once, and a link cannot make a page show text of its own.
        page.reload()
        assert page.get_by_role("alert").count() == 0
        page.goto("/console/deployments/greeter?error=Your+session+expired&flash=call+us")
        assert page.get_by_role("alert").count() == 0 and page.get_by_role("status").count() == 0

        # A paused run: what it waits for, and a form that resumes it with the human's input.
        run_id = p.cli_json("workflows", "run", "flows", "Approve", "--param", "amount=3")["run_id"]
        wait_for(lambda: p.cli_json("workflows", "status", run_id)["status"] == "paused", what="the pause")
        page.get_by_role("link", name="Runs").click()
        page.get_by_label("Status").select_option("paused")
        page.get_by_role("button", name="Filter").click()
        run = page.locator(f"#run-{run_id}")
        assert run.get_by_text("Waiting for: approve").is_visible()
        accessible(page)
        page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)
        run.get_by_label("Your answer (text or JSON)").fill('{"ok": true, "by": "olga"}')
        run.get_by_role("button", name="Resume").click()
        assert page.get_by_role("status").text_content() == f"resume: {run_id}"
        done = wait_for(lambda: (s := p.cli_json("workflows", "status", run_id))["status"] == "completed" and s,
                        timeout=90, what="the run's end")
        assert done["result"]["decision"] == {"ok": True, "by": "olga"}
        page.goto("/console/runs?status=completed")
        assert page.locator(f"#run-{run_id}").get_by_text("completed").is_visible()

        # The overview's charts come from the usage the registry keeps: the calls made above are in them.
        page.goto("/console/")
        summary = page.locator("#traffic + p").text_content()
        assert int(summary.split()[0]) >= 1 and "calls" in summary, summary
        assert page.get_by_role("img", name=re.compile("Mean tool call answer time")).count() == 1

        # Signing out ends the login: the console asks for it again.
        page.get_by_role("button", name="Sign out").click()
        page.goto("/console/")
        assert "/oauth/authorize" in page.url
    finally:
        context.close()


def test_a_viewer_sees_no_controls_and_the_api_refuses_them(con, browser):
    p = con
    run_id = p.cli_json("workflows", "run", "flows", "Approve", "--param", "amount=1")["run_id"]
    wait_for(lambda: p.cli_json("workflows", "status", run_id)["status"] == "paused", what="the pause")
    context, page = signed_in(browser, p, "vic")
    try:
        page.goto("/console/deployments/greeter")
        assert page.get_by_role("heading", name="Connect an MCP client").is_visible()
        for name in ("Delete greeter", "Publish as @default/greeter", "Update the listing", "Roll back to 2"):
            assert page.get_by_role("button", name=name).count() == 0, name
        page.goto("/console/runs?status=paused")
        assert page.locator(f"#run-{run_id}").get_by_text("Waiting for: approve").is_visible()
        assert page.get_by_role("button", name="Resume").count() == 0
        assert page.get_by_role("button", name="Cancel").count() == 0
        # The console's own form routes refuse a viewer, with or without the page's CSRF token.
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        answer = page.request.post(f"/console/runs/{run_id}/resume", form={"csrf": csrf, "payload": "x"},
                                   max_redirects=0)
        assert answer.status == 303, answer.headers
        page.goto(answer.headers["location"])
        assert "may not" in page.get_by_role("alert").text_content()
        forged = page.request.post("/console/deployments/greeter/delete", form={"csrf": "forged"}, max_redirects=0)
        assert forged.status == 303
        page.goto(forged.headers["location"])
        assert "expired" in page.get_by_role("alert").text_content()
    finally:
        context.close()
    viewer = p.cli_json("admin", "token", "--org", "default", "--role", "viewer")["token"]
    assert p.api("DELETE", "/api/v1/deployments/greeter", token=viewer).status_code == 403
    assert p.api("POST", f"/api/v1/runs/{run_id}/resume", token=viewer, json={}).status_code == 403
    assert p.api("POST", "/api/v1/deployments/greeter/versions", token=viewer, json={}).status_code in (400, 403)
    assert p.api("GET", "/api/v1/deployments/greeter").status_code == 200
    p.cli_json("workflows", "cancel", run_id)
