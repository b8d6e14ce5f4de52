"""End-to-end tests of the web console in a real headless Chromium (Debian's `chromium`),
driven by Playwright. Controls are found by role and accessible name (the API contract, "Web console").

Environment: CONSOLE_URL (a running `cloud-agent serve`), CONSOLE_TOKEN (user local),
CONSOLE_OTHER_TOKEN (another user), CONSOLE_SCREENSHOTS (a directory; optional),
CONSOLE_FILTER (run only tests whose name contains it; optional).
"""
import os
import re
import sys
import time
import traceback

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["CONSOLE_URL"].rstrip("/")
TOKEN = os.environ["CONSOLE_TOKEN"]
OTHER = os.environ["CONSOLE_OTHER_TOKEN"]
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")
expect.set_options(timeout=20_000)


class Page:
    """A fresh browser context and page that records console errors, page errors and dialogs."""

    def __init__(self, browser, width=1100):
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.dialogs = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.accept_dialogs = False
        self.expected = []

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.accept() if self.accept_dialogs else dialog.dismiss()

    def sign_in(self, token=TOKEN):
        p = self.page
        p.goto(BASE + "/")
        p.get_by_role("textbox", name="API token").fill(token)
        p.get_by_role("button", name="Sign in").click()
        expect(p.get_by_role("heading", name="Sessions")).to_be_visible()
        return p

    def start(self, prompt, idle=None, shot=None, ask=False):
        """Starts a session from the form; returns its id once its page is open."""
        p = self.page
        p.get_by_role("button", name="New session").click()
        p.get_by_role("textbox", name="Prompt").fill(prompt)
        expect(p.get_by_role("combobox", name="Agent")).to_have_value("scripted")
        if idle:
            p.get_by_role("textbox", name="Idle timeout").fill(idle)
        if ask:
            p.get_by_role("checkbox", name="Ask before the agent uses a tool").check()
        if shot:
            screenshot(p, shot)
        p.get_by_role("button", name="Start").click()
        expect(p).to_have_url(re.compile(r"#/sessions/agent_"))
        return p.url.split("#/sessions/")[1]

    def expect_http_error(self, status):
        """Chromium logs every 4xx answer as a console error; this one the test provokes."""
        self.expected.append(f"status of {status} ")

    def close(self):
        self.context.close()
        errors = [e for e in self.errors if not (e.startswith("Failed to load resource") and any(x in e for x in self.expected))]
        assert not errors, f"console errors: {errors}"


def screenshot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name), full_page=True)


def events(p):
    return p.get_by_role("region", name="Events", exact=True)


def state(p):
    return p.locator("#runtime-state")


# ---- the tests ----

def test_csp_and_static_files(browser, ctx):
    request = ctx.page.request
    for path in ["/", "/ui/app.js", "/ui/console.css", "/ui/session.js"]:
        response = request.get(BASE + path)
        assert response.status == 200, path
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, (path, csp)
        etag = response.headers["etag"]
        again = request.get(BASE + path, headers={"If-None-Match": etag})
        assert again.status == 304, (path, again.status)
    assert request.get(BASE + "/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert request.get(BASE + "/").headers["content-type"].startswith("text/html")
    for bad in ["/ui/nope.js", "/ui/..%2fopenapi.yaml", "/ui/%2e%2e%2fopenapi.yaml", "/ui/"]:
        assert request.get(BASE + bad).status == 404, bad


def test_sign_in_by_keyboard_and_sign_out(browser, ctx):
    p = ctx.page
    ctx.expect_http_error(401)
    p.goto(BASE + "/")
    expect(p.get_by_role("button", name="Sign out")).to_be_hidden()
    p.get_by_role("textbox", name="API token").fill("not-a-token")
    p.get_by_role("button", name="Sign in").click()
    expect(p.get_by_text("That token is not valid.")).to_be_visible()
    p.goto(BASE + "/")  # reload: the token field has the focus, Enter signs in
    expect(p.get_by_role("textbox", name="API token")).to_be_focused()
    p.keyboard.type(TOKEN)
    p.keyboard.press("Enter")
    expect(p.get_by_role("heading", name="Sessions")).to_be_visible()
    expect(p.get_by_role("link", name="Sessions")).to_be_visible()
    p.get_by_role("link", name="Agents").click()
    expect(p.get_by_role("row").filter(has_text="scripted").first).to_contain_text("yes")
    expect(p.get_by_role("button", name="Sign out")).to_be_visible()
    p.get_by_role("button", name="Sign out").click()
    expect(p.get_by_role("textbox", name="API token")).to_be_visible()
    expect(p.get_by_role("link", name="Sessions")).to_be_hidden()


def test_live_events_countdown_idle_stop_and_cold_follow_up(browser, ctx):
    p = ctx.sign_in()
    ctx.start("tick 5 0.5\nrun echo done-running", idle="8s", shot="console-new.png")
    region = events(p)
    expect(region).to_contain_text("tick 1/5")
    # Live: the page is open while the later ticks arrive.
    assert "tick 5/5" not in region.inner_text()
    expect(region).to_contain_text("tick 5/5")
    expect(region).to_contain_text("● run: echo done-running → exit 0")
    region.get_by_text("run", exact=True).click()  # the tool's output, expanded
    expect(region.locator("details[open] pre")).to_have_text("done-running")
    expect(region).to_contain_text("✓ execution completed")
    # The page follows its events at once: the executions panel and the runtime state do not
    # wait for the next periodic re-read (every 2-5 s) to leave "pending" and "working".
    expect(p.get_by_role("list", name="Executions")).to_contain_text("completed", timeout=1500)
    expect(state(p)).not_to_contain_text("working", timeout=1500)
    # The countdown, counting down each second, then the stop reason with its inputs.
    expect(state(p)).to_contain_text(re.compile(r"idle stop in \d+s"))
    first = int(re.search(r"idle stop in (\d+)s", state(p).inner_text()).group(1))
    time.sleep(1.6)
    second = int(re.search(r"idle stop in (\d+)s", state(p).inner_text()).group(1))
    assert second < first, (first, second)
    screenshot(p, "console-session.png")
    expect(region).to_contain_text("◇ runtime stopped: rule idle", timeout=30_000)
    expect(state(p)).to_have_text("stopped · idle", timeout=1500)
    expect(p.get_by_role("definition").filter(has_text="rule idle (idle")).to_be_visible()
    # A follow-up cold-starts the runtime.
    p.get_by_role("textbox", name="Message").fill("say back again")
    p.get_by_role("textbox", name="Message").press("Control+Enter")  # sends, as "Send" does
    expect(region).to_contain_text("cold start: workspace restored", timeout=60_000)
    expect(region).to_contain_text("back again")
    expect(p.get_by_role("list", name="Executions").get_by_text("completed")).to_have_count(2, timeout=30_000)
    # The idle timeout changed live.
    p.get_by_role("textbox", name="Idle timeout").fill("10m")
    p.get_by_role("button", name="Change").click()
    expect(p.get_by_text("Idle timeout is now 10m.")).to_be_visible()


def test_stream_resumes_after_a_4001_close(browser, ctx):
    """The first stream is cut with 4001 after 3 events (as the server cuts a slow subscriber):
    the page reconnects from id 3 and shows every event once, in order."""
    p = ctx.sign_in()
    urls = []

    def route(ws):
        server = ws.connect_to_server()
        urls.append(ws.url)
        first, seen = len(urls) == 1, []

        def forward(message):
            if first and len(seen) >= 3:
                return
            seen.append(message)
            ws.send(message)
            if first and len(seen) == 3:
                ws.close(code=4001, reason="too slow: resume from fromId=3")
                server.close()
        server.on_message(forward)

    p.route_web_socket(re.compile(r"/stream\?"), route)
    ctx.start("tick 8 0.3")
    expect(events(p)).to_contain_text("tick 8/8")
    expect(events(p)).to_contain_text("✓ execution completed")
    assert len(urls) >= 2 and "fromId=3" in urls[1], urls
    ids = [int(i) for i in events(p).locator("li").evaluate_all("items => items.map(i => i.dataset.id)")]
    assert ids == list(range(1, len(ids) + 1)), ids


def test_busy_send_interrupt_and_delete(browser, ctx):
    p = ctx.sign_in()
    session = ctx.start("tick 100 0.2")
    expect(events(p)).to_contain_text("tick 3/100")
    ctx.expect_http_error(409)
    p.get_by_role("textbox", name="Message").fill("say too soon")
    p.get_by_role("button", name="Send").click()
    expect(p.get_by_text("The agent is still working on the previous message")).to_be_visible()
    p.get_by_role("button", name="Interrupt").click()
    expect(events(p)).to_contain_text("■ execution interrupted")
    expect(p.get_by_role("list", name="Executions")).to_contain_text("interrupted")
    # Delete asks first: dismissed, nothing happens; accepted, the session is gone (a re-read
    # already on its way when it goes may meet a 404).
    ctx.expect_http_error(404)
    p.get_by_role("button", name="Delete").click()
    assert len(ctx.dialogs) == 1
    expect(p).to_have_url(re.compile(session))
    ctx.accept_dialogs = True
    p.get_by_role("button", name="Delete").click()
    expect(p.get_by_role("heading", name="Sessions")).to_be_visible()
    expect(p.get_by_role("link", name=session)).to_have_count(0)


def test_queue_a_message_list_and_cancel(browser, ctx):
    """The message queue: with "Queue" ticked a message sent while the agent works waits its
    turn; the queued messages are listed, one is cancelled, the other runs once the first ends."""
    p = ctx.sign_in()
    ctx.start("say working\nsleep 4\nsay first done")
    expect(events(p)).to_contain_text("working")
    p.get_by_role("checkbox", name="Queue").check()
    p.get_by_role("textbox", name="Message").fill("say from the queue")
    p.get_by_role("button", name="Send").click()
    expect(p.get_by_text("Queued (position 1).")).to_be_visible()
    p.get_by_role("textbox", name="Message").fill("say never")
    p.get_by_role("button", name="Send").click()
    queued = p.get_by_role("list", name="Queued messages")
    expect(queued.get_by_role("listitem")).to_have_count(2)
    expect(queued).to_contain_text("say from the queue")
    queued.get_by_role("listitem").filter(has_text="say never").get_by_role("button", name=re.compile("Cancel")).click()
    expect(queued.get_by_role("listitem")).to_have_count(1)
    region = events(p)
    expect(region).to_contain_text("from the queue", timeout=30_000)
    expect(p.locator("#queue-card")).to_be_hidden()
    # The cancelled one never ran: no execution of it, no text of it.
    expect(p.get_by_role("list", name="Executions")).not_to_contain_text("say never")
    expect(region.get_by_role("listitem").filter(has_text=re.compile(r"^never$"))).to_have_count(0)


def test_input_requests_allow_answer_deny(browser, ctx):
    """Agents that ask: a permission with Allow and Deny, a question with Answer; the list shows
    the session waiting for input; each answer lets the agent go on."""
    p = ctx.sign_in()
    session = ctx.start("approve touch from-the-console.txt\nask Favourite colour?\napprove touch denied.txt\nsay finished", ask=True)
    waiting = p.get_by_role("region", name="The agent is waiting for you")
    expect(waiting.get_by_role("button", name="Allow", exact=True)).to_be_visible()
    expect(waiting).to_contain_text("touch from-the-console.txt")
    screenshot(p, "console-input-request.png")
    p.get_by_role("link", name="Sessions").click()
    row = p.get_by_role("listitem").filter(has=p.get_by_role("link", name=session))
    expect(row).to_contain_text("waiting for input")
    p.get_by_role("link", name=session).click()
    waiting.get_by_role("button", name="Allow", exact=True).click()
    expect(waiting.get_by_role("textbox", name="Answer")).to_be_visible()
    expect(waiting).to_contain_text("Favourite colour?")
    waiting.get_by_role("textbox", name="Answer").fill("teal")
    waiting.get_by_role("button", name="Answer", exact=True).click()
    expect(waiting).to_contain_text("touch denied.txt")
    waiting.get_by_role("button", name="Deny").click()
    region = events(p)
    expect(region).to_contain_text("answer: teal")
    expect(region).to_contain_text("denied: touch denied.txt")
    expect(region).to_contain_text("✓ execution completed")
    expect(p.locator("#input-requests")).to_be_hidden()


def test_budget_from_the_form_continue_then_stop(browser, ctx):
    """A budget set in the form (a bad amount refused next to its field), shown with the usage;
    each time the agent reaches it, the page asks with the question and Continue / Stop:
    Continue raises the budget and the agent goes on, Stop interrupts it with reason budget."""
    p = ctx.sign_in()
    p.get_by_role("button", name="New session").click()
    p.get_by_role("textbox", name="Prompt").fill("usage 10 10 2\ntick 20 0.05\nusage 10 10 3\ntick 200 0.05\nsay never reached")
    p.get_by_role("checkbox", name="Ask before the agent uses a tool").check()
    cost = p.get_by_role("textbox", name="Max cost (USD)")
    cost.fill("lots")
    p.get_by_role("button", name="Start").click()
    expect(cost).to_have_accessible_description(re.compile("amount of US dollars"))
    expect(cost).to_be_focused()
    cost.fill("1")
    p.get_by_role("textbox", name="Max tokens").fill("1,000,000")
    p.get_by_role("button", name="Start").click()
    expect(p).to_have_url(re.compile(r"#/sessions/agent_"))
    waiting = p.get_by_role("region", name="The agent is waiting for you")
    expect(waiting).to_contain_text("This session has used $2.00 of its $1.00 budget. Continue with $1.00 more?")
    spend = p.get_by_role("definition")
    expect(spend.filter(has_text="$1.00, 1,000,000 tokens")).to_be_visible()
    expect(spend.filter(has_text="$2.00, 20 tokens")).to_be_visible()
    expect(events(p)).to_contain_text("? budget: This session has used $2.00 of its $1.00 budget.")
    waiting.get_by_role("button", name="Continue").click()
    expect(waiting).to_contain_text("This session has used $5.00 of its $2.00 budget.")
    expect(spend.filter(has_text="(allowed $2.00, 2,000,000 tokens after 1 raise)")).to_be_visible()
    waiting.get_by_role("button", name="Stop").click()
    region = events(p)
    expect(region).to_contain_text("■ execution interrupted")
    expect(region).to_contain_text("(reason: budget)")
    expect(p.get_by_role("list", name="Executions")).to_contain_text("interrupted (reason: budget)")
    expect(p.locator("#input-requests")).to_be_hidden()
    expect(region.get_by_role("listitem").filter(has_text=re.compile(r"^never reached$"))).to_have_count(0)


def test_acp_agent_from_the_form(browser, ctx):
    """An ACP agent of the agents file (the fixture): chosen in the form, its turn rendered,
    and a follow-up in the same runtime continuing its ACP session."""
    p = ctx.sign_in()
    p.get_by_role("button", name="New session").click()
    p.get_by_role("textbox", name="Prompt").fill("say hello over acp\nrun echo from-the-acp-tool")
    p.get_by_role("combobox", name="Agent").select_option("fixture-acp")
    p.get_by_role("button", name="Start").click()
    expect(p).to_have_url(re.compile(r"#/sessions/agent_"))
    region = events(p)
    expect(region).to_contain_text("hello over acp")
    expect(region).to_contain_text("permission allowed once")
    expect(region).to_contain_text("echo from-the-acp-tool → exit 0")
    expect(region).to_contain_text("✓ execution completed")
    p.get_by_role("textbox", name="Message").fill("recall")
    p.get_by_role("button", name="Send").click()
    expect(region).to_contain_text("recall: say hello over acp")
    expect(p.get_by_role("list", name="Executions").get_by_text("completed")).to_have_count(2, timeout=30_000)


def test_form_errors_next_to_their_field(browser, ctx):
    p = ctx.sign_in()
    p.get_by_role("button", name="New session").click()
    # Every agent is offered; one the server cannot run is disabled, saying why.
    agents = p.request.get(BASE + "/v1/agents", headers={"Authorization": f"Bearer {TOKEN}"}).json()["agents"]
    for agent in agents:
        option = p.get_by_role("combobox", name="Agent").locator(f'option[value="{agent["name"]}"]')
        if agent["available"]:
            expect(option).to_be_enabled()
        else:
            expect(option).to_be_disabled()
            expect(option).to_contain_text("unavailable")
    p.get_by_role("textbox", name="Prompt").fill("say never")
    p.get_by_role("textbox", name="Idle timeout").fill("soon")
    p.get_by_role("button", name="Start").click()
    expect(p.get_by_role("textbox", name="Idle timeout")).to_have_accessible_description(re.compile("duration like"))
    p.get_by_role("textbox", name="Idle timeout").fill("1m")
    p.get_by_role("textbox", name="Repository").fill("https://example.invalid/repo;rm -rf")
    ctx.expect_http_error(400)
    p.get_by_role("button", name="Start").click()
    repository = p.get_by_role("textbox", name="Repository")
    expect(repository).to_have_accessible_description(re.compile("repo"))
    expect(repository).to_be_focused()
    expect(p).to_have_url(re.compile("#/new"))


def test_heartbeat_age_while_the_agent_is_silent(browser, ctx):
    p = ctx.sign_in()
    ctx.start("sleep 6\nsay woke up")
    expect(p.get_by_text(re.compile(r"last heartbeat \d+s ago"))).to_be_visible(timeout=10_000)
    expect(events(p)).to_contain_text("woke up")
    expect(p.get_by_text(re.compile(r"last heartbeat"))).to_be_hidden()


def test_html_prompt_is_text(browser, ctx):
    p = ctx.sign_in()
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    ctx.start("say " + hostile)
    expect(events(p)).to_contain_text(hostile)
    expect(p.get_by_role("list", name="Executions")).to_contain_text("completed")
    assert events(p).locator("img, script").count() == 0
    assert ctx.dialogs == [], ctx.dialogs


def test_list_phone_width_and_other_user(browser, ctx):
    p = ctx.sign_in()
    ids = p.get_by_role("link", name=re.compile(r"^agent_"))
    expect(ids.first).to_be_visible()
    assert ids.count() >= 2
    expect(p.get_by_role("listitem").filter(has_text="stopped · idle").first).to_be_visible()
    screenshot(p, "console-sessions.png")
    first_id = ids.first.inner_text()
    # Phone width: nothing scrolls sideways.
    phone = Page(browser, width=390)
    try:
        phone.sign_in()
        expect(phone.page.get_by_role("link", name=re.compile(r"^agent_")).first).to_be_visible()
        assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        phone.close()
    # Another user sees none of them, not even by the session's address.
    other = Page(browser)
    try:
        q = other.sign_in(OTHER)
        expect(q.get_by_text("No sessions yet")).to_be_visible()
        expect(q.get_by_role("link", name=re.compile(r"^agent_"))).to_have_count(0)
        other.expect_http_error(404)
        q.goto(f"{BASE}/#/sessions/{first_id}")
        expect(q.get_by_text("This session does not exist")).to_be_visible()
    finally:
        other.close()


def main():
    wanted = os.environ.get("CONSOLE_FILTER", "")
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and wanted in n]
    failed = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                             args=["--no-sandbox"])
        for name, test in tests:
            ctx = Page(browser)
            started = time.time()
            try:
                test(browser, ctx)
                ctx.close()
                print(f"PASS {name} ({time.time() - started:.1f}s)", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {name} ({time.time() - started:.1f}s)\n{traceback.format_exc()}", flush=True)
                try:
                    ctx.page.screenshot(path=os.path.join(os.environ.get("CONSOLE_FAILURES", "/tmp"), f"{name}.png"))
                    ctx.context.close()
                except Exception:
                    pass
        browser.close()
    print(f"{len(tests) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
