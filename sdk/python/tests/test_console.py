"""The operator console, end to end in a real browser: Debian's ``chromium``
driven by Playwright (never a downloaded browser) against a real ``tesserad``
(memory store, or a real redis-server with ``TESSERA_TEST_STORE=redis``).

One broker and one browser for the module; each test opens its own browser
context (its own cookies). Waits are on page elements and events with a
bound, never fixed sleeps. Every run photographs the pages (a page that
cannot render fails the test); with ``TESSERA_WRITE_SCREENSHOTS=1`` the
memory run writes them into ``docs/`` for the README, so ``make test`` leaves
the tree as it found it.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import http.client
import json
import os
import pathlib
import re
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tessera_sdk import AgentClient, OrchestratorClient, PendingApproval, TesseraError, Token

from .conftest import CRM, PAYMENTS, Broker, _dev_init, bin_dir, spiffe

CHROMIUM = "/usr/bin/chromium"
DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs"
TRANSFER = "payments.transfers.create"
READ = "crm.contacts.read"
# Bounds for waits on the page, in ms: generous, never slept.
WAIT_MS = 20_000
# Only the memory run writes the README's pictures, and only when asked.
WRITE_DOCS = os.environ.get("TESSERA_WRITE_SCREENSHOTS") == "1" and os.environ.get("TESSERA_TEST_STORE") != "redis"


def shoot(page: Page, name: str) -> None:
    png = page.screenshot(full_page=True)
    assert png.startswith(b"\x89PNG"), f"the {name} page did not render"
    if WRITE_DOCS:
        (DOCS / f"console-{name}.png").write_bytes(png)


@pytest.fixture(scope="module")
def console_broker(tmp_path_factory: pytest.TempPathFactory, store_env: dict[str, str]) -> Iterator[Broker]:
    """A broker with the console on (as `tessera dev init` configures it);
    alice (operator) is also an agent of the orchestrator's team here, so
    that she can make a request she must not approve herself (the code
    refuses a self-decision whatever the roles)."""
    if not pathlib.Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: `make test-tools` installs Debian's chromium")
    directory = tmp_path_factory.mktemp("console")
    _dev_init(directory)
    config = directory / "tesserad.toml"
    text = config.read_text()
    assert "[console]\nenabled = true" in text, "dev init turns the console on"
    alice = (
        'id = "spiffe://tessera.local/operator/alice"\nkind = "human"\nowner = "security-oncall"\nroles = ["operator"]'
    )
    assert alice in text
    # In the orchestrator's team, so that it may put her in a task.
    # Humans never hold write tokens and agents never approve: a service
    # identity holding both roles.
    mixed = alice.replace("human", "service").replace("security-oncall", "team-research")
    text = text.replace(alice, mixed.replace('"]', '", "agent"]'))
    # A second operator, to disable and enable alice and to reload policy.
    gateway = 'id = "spiffe://tessera.local/service/api-gateway"\nkind = "service"\nowner = "team-platform"\n'
    assert gateway + 'roles = ["verifier"]' in text
    text = text.replace(gateway + 'roles = ["verifier"]', gateway + 'roles = ["verifier", "operator"]')
    config.write_text(text)
    broker = Broker(dir=directory, env=dict(store_env))
    broker.start()
    assert broker.oauth, "the facade (and so the console) listens"
    yield broker
    broker.stop()


def spki_pin(cert_pem: pathlib.Path) -> str:
    """Chromium's pin of the broker's certificate: base64 SHA-256 of its SPKI,
    so the browser trusts that one certificate and nothing else."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def browser(console_broker: Broker) -> Iterator[Browser]:
    pin = spki_pin(console_broker.dir / "broker.pem")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={pin}"],
        )
        yield b
        b.close()


def origin(broker: Broker) -> str:
    return f"https://{broker.oauth}"


def sign_in_url(broker: Broker, who: str = "alice") -> str:
    out = json.loads(broker.cli("--as", who, "--output", "json", "console", "--no-open"))
    url = str(out["url"])
    # The code rides in the fragment, which a browser never sends.
    assert url.startswith(origin(broker) + "/console/signin#code=")
    assert "?" not in url
    return url


def code_of(url: str) -> str:
    return url.split("#code=")[1]


ALICE = "spiffe://tessera.local/operator/alice"


def signed_in(broker: Broker, browser: Browser) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(sign_in_url(broker))
    # The page names whom the code signs in as before anything is spent.
    assert page.inner_text("#signin-as") == ALICE
    page.click("#signin")
    page.wait_for_url(origin(broker) + "/console/")
    page.wait_for_selector("#live[data-state=live]", timeout=WAIT_MS)
    return context, page


def pending_ids(broker: Broker) -> list[str]:
    out = json.loads(broker.cli("--as", "alice", "--output", "json", "approvals", "ls"))
    items = out["approvals"] if isinstance(out, dict) else out
    return [str(a["approval_id"]) for a in items]


def introspect_active(broker: Broker, token: Token) -> bool:
    out = json.loads(broker.cli("--as", "api-gateway", "--output", "json", "introspect", token.access_token))
    return bool(out["active"])


def csrf_of(page: Page) -> str:
    value = page.get_attribute("input[name=csrf]", "value")
    assert value
    return value


def test_a_high_impact_request_appears_live_and_its_approval_yields_exactly_one_token(
    console_broker: Broker, browser: Browser
) -> None:
    broker = console_broker
    context, page = signed_in(broker, browser)
    page.evaluate("window.__sameDocument = true")
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    with orch.task([spiffe("researcher")], {PAYMENTS: [TRANSFER]}, duration_seconds=600) as task:
        pending = agent.request_token(task.task_id, PAYMENTS, [TRANSFER], bind=True)
        assert isinstance(pending, PendingApproval)
        tokens: list[Token] = []
        waiter = threading.Thread(target=lambda: tokens.append(agent.await_approval(pending, timeout=60)))
        waiter.start()
        card = f'article[data-approval="{pending.approval_id}"]'
        page.wait_for_selector(card, timeout=WAIT_MS)
        assert page.evaluate("window.__sameDocument") is True, "appeared without a reload"
        text = page.inner_text(card)
        for shown in (spiffe("researcher"), "agent", task.task_id, PAYMENTS, TRANSFER, "write", "Blast radius"):
            assert shown in text, shown
        shoot(page, "approvals")
        page.fill(f"{card} input[name=reason]", "invoice 4711 checked")
        page.click(f"{card} button.approve")
        page.wait_for_selector("#notice", timeout=WAIT_MS)
        waiter.join(timeout=60)
        assert len(tokens) == 1, "the waiting agent got its token"
        assert tokens[0].approval_id == pending.approval_id
        with pytest.raises(TesseraError):
            agent.await_approval(pending.approval_id, timeout=10)
        grants = json.loads(broker.cli("--as", "alice", "--output", "json", "grants", "ls", "--task", task.task_id))
        listed = grants["grants"] if isinstance(grants, dict) else grants
        assert len(listed) == 1, "exactly one token for one approval"
        # The same audit record as over gRPC, naming the console session.
        page.goto(origin(broker) + "/console/audit?q=approval_decided")
        row = page.inner_text("#audit tbody tr")
        assert "approval_decided" in row
        assert re.search(r"cs_[0-9a-f]{12}", row), row
        assert "verifies" in page.inner_text("#chain")
        shoot(page, "audit")
    agent.close()
    orch.close()
    context.close()


def test_the_requester_cannot_approve_its_own_request(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    context, page = signed_in(broker, browser)
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    alice = AgentClient(broker.endpoint, broker.identity("alice"))
    with orch.task([spiffe("operator/alice")], {PAYMENTS: [TRANSFER]}, duration_seconds=600) as task:
        pending = alice.request_token(task.task_id, PAYMENTS, [TRANSFER], mtls_binding=True)
        assert isinstance(pending, PendingApproval)
        card = f'article[data-approval="{pending.approval_id}"]'
        page.wait_for_selector(card, timeout=WAIT_MS)
        assert "your own request" in page.inner_text(card)
        page.fill(f"{card} input[name=reason]", "mine")
        page.click(f"{card} button.approve")
        page.wait_for_selector("#error", timeout=WAIT_MS)
        assert "own" in page.inner_text("#error")
        assert pending.approval_id in pending_ids(broker), "still pending: nothing was decided"
    alice.close()
    orch.close()
    context.close()


def test_a_task_revoked_from_the_page_makes_its_tokens_introspect_inactive(
    console_broker: Broker, browser: Browser
) -> None:
    broker = console_broker
    context, page = signed_in(broker, browser)
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    task = orch.start_task([spiffe("researcher"), spiffe("writer")], {CRM: [READ]}, duration_seconds=600)
    parent = agent.token(task.task_id, CRM, [READ])
    child = agent.delegate(parent, spiffe("writer"), [READ])
    assert introspect_active(broker, parent)
    assert introspect_active(broker, child)
    page.goto(origin(broker) + "/console/tasks")
    article = f'article[data-task="{task.task_id}"]'
    page.wait_for_selector(article)
    assert page.locator(f'{article} li.grant li.grant[data-grant="{child.grant_id}"]').count() == 1, "delegation tree"
    shoot(page, "tasks")
    page.click(f"{article} a.revoke-task")
    assert "2" in page.inner_text("#count"), "says how many grants it ends"
    shoot(page, "confirm")
    page.fill("input[name=reason]", "incident 12: agent looping")
    page.click("#confirm")
    page.wait_for_selector("#notice", timeout=WAIT_MS)
    assert "2 grant(s)" in page.inner_text("#notice")
    assert not introspect_active(broker, parent)
    assert not introspect_active(broker, child)
    page.goto(origin(broker) + "/console/blast?by=identity")
    assert page.locator("#blast tbody tr").count() >= 5
    shoot(page, "blast")
    page.goto(origin(broker) + "/console/keys")
    keys = page.inner_text("#keys")
    assert "signing" in keys
    assert "BEGIN" not in keys
    assert '"d"' not in keys
    shoot(page, "keys")
    agent.close()
    orch.close()
    context.close()


def test_a_non_operator_cannot_sign_in(console_broker: Broker) -> None:
    command = [str(bin_dir() / "tessera"), "--dev-dir", str(console_broker.dir)]
    command += ["--endpoint", f"https://{console_broker.endpoint}", "--as", "researcher", "console", "--no-open"]
    out = subprocess.run(command, capture_output=True, check=False)  # noqa: S603
    assert out.returncode != 0
    assert b"code=" not in out.stdout
    assert b"operator" in out.stderr or b"denied" in out.stderr.lower(), out.stderr


def test_a_forged_cross_site_post_changes_nothing(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    context, page = signed_in(broker, browser)
    token = csrf_of(page)
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    with orch.task([spiffe("researcher")], {PAYMENTS: [TRANSFER]}, duration_seconds=600) as task:
        pending = agent.request_token(task.task_id, PAYMENTS, [TRANSFER], bind=True)
        assert isinstance(pending, PendingApproval)
        action = f"{origin(broker)}/console/approvals/{pending.approval_id}"
        # A page on another site, in the signed-in browser, posting the form
        # (with the right CSRF token even: it must not matter).
        evil = (
            f'<form method="post" action="{action}"><input name="decision" value="approve">'
            f'<input name="reason" value="x"><input name="csrf" value="{token}">'
            '<button id="go" type="submit">win a prize</button></form>'
        )
        context.route("https://evil.example/**", lambda route: route.fulfill(content_type="text/html", body=evil))
        attacker = context.new_page()
        attacker.goto("https://evil.example/")
        with attacker.expect_navigation():
            attacker.click("#go")
        assert "Request refused" in attacker.content()
        assert pending.approval_id in pending_ids(broker), "the forged POST decided nothing"
        # Same origin but no CSRF token, and a valid token from another origin:
        # refused alike.
        cookie = session_cookie(context)
        path = f"/console/approvals/{pending.approval_id}"
        no_token = console_request(
            broker,
            "POST",
            path,
            cookie=cookie,
            form={"decision": "approve", "reason": "x"},
            origin_header=origin(broker),
        )
        assert no_token[0] == 403
        for other in ("https://evil.example", "null", None):
            forged = console_request(
                broker,
                "POST",
                path,
                cookie=cookie,
                form={"decision": "approve", "reason": "x", "csrf": token},
                origin_header=other,
            )
            assert forged[0] == 403, other
        assert pending.approval_id in pending_ids(broker)
        # Decided elsewhere (gRPC) while the page is open: the page's POST is
        # refused with a clear status, and the agent gets one token, once.
        tokens: list[Token] = []
        waiter = threading.Thread(target=lambda: tokens.append(agent.await_approval(pending, timeout=60)))
        waiter.start()
        broker.cli("--as", "alice", "approvals", "approve", pending.approval_id, "--reason", "from the CLI")
        late = console_request(
            broker,
            "POST",
            path,
            cookie=cookie,
            form={"decision": "approve", "reason": "again", "csrf": token},
            origin_header=origin(broker),
        )
        assert late[0] == 409, late
        assert "not pending" in late[2]
        waiter.join(timeout=60)
        assert len(tokens) == 1
    agent.close()
    orch.close()
    context.close()


def console_request(
    broker: Broker,
    method: str,
    path: str,
    *,
    cookie: str = "",
    form: dict[str, str] | None = None,
    origin_header: str | None = None,
) -> tuple[int, dict[str, str], str]:
    """One request to the console outside the browser (a cookie set by
    hand, headers a browser would not let a page choose), trusting only the
    broker's dev CA. Returns the status, the headers and the body."""
    tls = ssl.create_default_context(cafile=str(broker.dir / "ca.pem"))
    tls.check_hostname = False
    host, port = broker.oauth.rsplit(":", 1)
    headers = {"Cookie": f"__Host-tessera-console={cookie}"} if cookie else {}
    if origin_header is not None:
        headers["Origin"] = origin_header
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn = http.client.HTTPSConnection(host, int(port), context=tls, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def session_cookie(context: BrowserContext) -> str:
    return next(c["value"] for c in context.cookies() if c["name"] == "__Host-tessera-console")


def test_bad_sign_ins_and_ended_sessions_get_a_clear_refusal(
    console_broker: Broker, browser: Browser, tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    broker = console_broker
    # A code works once.
    url = sign_in_url(broker)
    first = browser.new_context()
    page = first.new_page()
    page.goto(url)
    # console.js moved the code into the form, out of the address bar and
    # the history, and continued to the page naming the identity.
    page.wait_for_selector("#signin-as")
    assert page.inner_text("#signin-as") == ALICE
    shoot(page, "signin")
    assert code_of(url) not in page.url
    visited = [page.url]
    while page.evaluate("history.length") > 1 and page.go_back() is not None:
        visited.append(page.url)
    assert not [u for u in visited if code_of(url) in u], f"the history keeps no code: {visited}"
    # Naming the identity spent nothing: the code, pasted, still signs in.
    page.goto(origin(broker) + "/console/signin")
    page.fill("#code", code_of(url))
    page.click("#continue")
    page.click("#signin")
    page.wait_for_url(origin(broker) + "/console/")
    second = browser.new_context()
    again = second.new_page()
    again.goto(url)
    again.wait_for_selector("#error")
    assert "already used" in again.inner_text("#error")
    second.close()
    # A forged code.
    forged = console_request(broker, "POST", "/console/signin", form={"code": "A" * 43}, origin_header=origin(broker))
    assert forged[0] == 401
    assert "already used or expired" in forged[2]
    cookie = session_cookie(first)
    attrs = next(c for c in first.cookies() if c["name"] == "__Host-tessera-console")
    assert attrs["httpOnly"]
    assert attrs["secure"]
    assert attrs["sameSite"] == "Strict"
    status, headers, body = console_request(broker, "GET", "/console/", cookie=cookie)
    assert status == 200
    # The page's own security headers; no code or cookie on it.
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert_no_inline_script(body)
    assert cookie not in body
    assert code_of(url) not in body
    # Without a cookie: a clear status, not a page.
    assert console_request(broker, "GET", "/console/")[0] == 401
    # A cookie of this broker means nothing to another broker.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _dev_init(other_dir)
    other = Broker(dir=other_dir, env=dict(store_env))
    other.start()
    try:
        assert console_request(other, "GET", "/console/", cookie=cookie)[0] == 401
    finally:
        other.stop()
    # After sign-out, the old cookie opens nothing.
    page.click("header button[type=submit]")
    page.wait_for_selector("#signed-out")
    assert console_request(broker, "GET", "/console/", cookie=cookie)[0] == 401
    first.close()


def test_a_grant_and_an_identity_revoked_from_the_page(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    context, page = signed_in(broker, browser)
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    task = orch.start_task([spiffe("researcher"), spiffe("writer")], {CRM: [READ]}, duration_seconds=600)
    first = agent.token(task.task_id, CRM, [READ])
    child = agent.delegate(first, spiffe("writer"), [READ])
    second = agent.token(task.task_id, CRM, [READ])
    # One grant, with what was delegated from it.
    page.goto(origin(broker) + "/console/tasks")
    page.click(f'li.grant[data-grant="{first.grant_id}"] > a.revoke')
    assert "2" in page.inner_text("#count")
    page.fill("input[name=reason]", "leaked in a log")
    page.click("#confirm")
    page.wait_for_selector("#notice", timeout=WAIT_MS)
    assert not introspect_active(broker, first)
    assert not introspect_active(broker, child)
    assert introspect_active(broker, second)
    # The identity, disabled: every grant it holds dies (here `second`, and
    # whatever earlier tests on this module's broker left live for it) and
    # it gets no new one. The page counts what the broker lists.
    listed = json.loads(
        broker.cli("--as", "alice", "--output", "json", "grant", "ls", "--subject", spiffe("researcher"))
    )
    holds = len(listed["grants"])
    assert holds >= 1
    page.click(f'article[data-task="{task.task_id}"] a.revoke-identity')
    assert f"It ends {holds} live grant(s)" in page.inner_text("#count")
    page.fill("input[name=reason]", "offboarding")
    page.check("#disable")
    page.click("#confirm")
    page.wait_for_selector("#notice", timeout=WAIT_MS)
    assert not introspect_active(broker, second)
    with pytest.raises(TesseraError):
        agent.token(task.task_id, CRM, [READ])
    broker.cli("--as", "alice", "identity", "enable", spiffe("researcher"), "--reason", "test over")
    agent.close()
    orch.close()
    context.close()


def test_another_site_cannot_frame_the_console(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    context, _page = signed_in(broker, browser)
    framing = f'<iframe id="f" src="{origin(broker)}/console/" width="800" height="600"></iframe>'
    context.route("https://evil.example/**", lambda route: route.fulfill(content_type="text/html", body=framing))
    attacker = context.new_page()
    attacker.goto("https://evil.example/")
    attacker.wait_for_load_state("load")
    frames = [f for f in attacker.frames if f != attacker.main_frame]
    assert len(frames) == 1
    # Refused by frame-ancestors / X-Frame-Options: the frame holds no
    # console page at all (not even the not-signed-in one a SameSite=Strict
    # cookie alone would give).
    assert frames[0].query_selector("#approvals") is None
    assert "Tessera console" not in frames[0].content()
    context.close()


class _Markup(html.parser.HTMLParser):
    """The elements of a page as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def assert_no_inline_script(body: str) -> None:
    """Every script of a console page is loaded from the console, with no
    inline code or event handler (the CSP forbids both; this checks the
    markup does not even try). Parsed, so escaped text cannot fool it."""
    markup = _Markup()
    markup.feed(body)
    markup.close()
    assert markup.scripts, "the page loads its one script"
    assert all(s.get("src") == "/console/assets/console.js" for s in markup.scripts), markup.scripts
    assert markup.script_text.strip() == "", "no inline script"
    assert markup.handlers == [], "no inline event handler"


def raw_sign_in(broker: Broker) -> str:
    """Signs alice in without a browser (so no event stream runs): the
    code's identity first, then the confirmed POST; returns the cookie."""
    code = code_of(sign_in_url(broker))
    named = console_request(broker, "POST", "/console/signin", form={"code": code}, origin_header=origin(broker))
    assert named[0] == 200
    assert ALICE in named[2]
    assert "set-cookie" not in named[1], "naming the identity signs no one in"
    status, headers, _ = console_request(
        broker, "POST", "/console/signin", form={"code": code, "confirm": "yes"}, origin_header=origin(broker)
    )
    assert status == 303
    cookie = headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert console_request(broker, "GET", "/console/", cookie=cookie)[0] == 200
    return cookie


def test_a_disabled_operator_s_sessions_end_at_once_and_an_enable_revives_none(console_broker: Broker) -> None:
    broker = console_broker
    cookie = raw_sign_in(broker)
    # Disabled and enabled again by another operator, with no console
    # request in between.
    broker.cli("--as", "api-gateway", "identity", "disable", ALICE, "--reason", "laptop lost")
    broker.cli("--as", "api-gateway", "identity", "enable", ALICE, "--reason", "laptop found")
    status, _, body = console_request(broker, "GET", "/console/", cookie=cookie)
    assert status == 401, "the session ended at the disable"
    assert "sign in again" in body
    # Enabled: a new sign-in works.
    raw_sign_in(broker)


def test_a_sign_in_code_in_the_query_string_is_refused_and_discarded(console_broker: Broker) -> None:
    broker = console_broker
    code = code_of(sign_in_url(broker))
    status, _, body = console_request(broker, "GET", "/console/signin?code=" + code)
    assert status == 400
    assert "never accepted in the URL" in body
    assert code not in body
    # Discarded: a copy of it in a proxy's log is worthless.
    later = console_request(
        broker, "POST", "/console/signin", form={"code": code, "confirm": "yes"}, origin_header=origin(broker)
    )
    assert later[0] == 401
    assert "set-cookie" not in later[1]


def test_without_javascript_the_code_is_pasted_and_the_identity_named(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    url = sign_in_url(broker)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(url)
    assert page.input_value("#code") == "", "no script: nothing moved the code"
    page.fill("#code", code_of(url))
    page.click("#continue")
    assert page.inner_text("#signin-as") == ALICE
    assert not any(c["name"] == "__Host-tessera-console" for c in context.cookies()), "not signed in yet"
    page.click("#signin")
    page.wait_for_url(origin(broker) + "/console/")
    assert page.inner_text("#who") == ALICE
    context.close()


def test_markup_from_agents_is_shown_as_text(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    markup = '<img src=x id=injected onerror="document.title=1"><script>document.title=2</script>'
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    task = orch.start_task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600)
    # The orchestrator's completion reason lands in the audit trail.
    orch.complete_task(task.task_id, reason=markup)
    orch.close()
    context, page = signed_in(broker, browser)
    page.goto(origin(broker) + "/console/audit?q=" + urllib.parse.quote(task.task_id))
    rows = page.inner_text("#audit tbody")
    assert markup in rows, "shown as the text it is"
    assert page.locator("#injected").count() == 0, "never parsed as markup"
    assert page.locator("#audit script").count() == 0
    # The filter (a query parameter anyone can put in a link) is escaped too.
    page.goto(origin(broker) + "/console/audit?q=" + urllib.parse.quote(markup))
    assert page.input_value("input[name=q]") == markup
    assert page.locator("#injected").count() == 0
    status, _, body = console_request(
        broker, "GET", "/console/audit?q=" + urllib.parse.quote(markup), cookie=session_cookie(context)
    )
    assert status == 200
    assert_no_inline_script(body)
    assert markup not in body
    context.close()


def test_a_page_policy_refuses_ends_its_stream_with_one_denial(console_broker: Broker, browser: Browser) -> None:
    broker = console_broker
    context, page = signed_in(broker, browser)
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    tasks = [orch.start_task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600) for _ in range(3)]
    for t in tasks:
        agent.token(t.task_id, CRM, [READ])
    extra = broker.dir / "policies" / "zz-console-test.cedar"
    extra.write_text(
        f'@id("test-alice-lists-no-approvals")\n'
        f'forbid (principal == Identity::"{ALICE}", action == Action::"ListApprovals", resource);\n'
        f'@id("test-alice-reads-no-tasks")\n'
        f'forbid (principal == Identity::"{ALICE}", action == Action::"GetTask", resource);\n'
    )
    try:
        broker.cli("--as", "api-gateway", "policy", "reload")
        # The open page's stream says so once and stops (it used to ask
        # again every 500 ms, each a counted denial, until quarantine).
        page.wait_for_selector("#live[data-state=not-allowed]", timeout=WAIT_MS)
        page.goto(origin(broker) + "/console/tasks")
        assert "Not allowed" in page.inner_text("#tasks-not-allowed")
        for t in tasks:
            assert page.locator(f'article[data-task="{t.task_id}"]').count() == 1, "its grants are still listed"
        page.goto(origin(broker) + "/console/audit?q=admin_denied")
        denials = [r for r in page.locator("#audit tbody tr").all_inner_texts() if ALICE in r]
        assert len(denials) == 1, denials
        assert "ListApprovals" in denials[0] or "list_approvals" in denials[0].lower(), denials[0]
    finally:
        extra.unlink()
        broker.cli("--as", "api-gateway", "policy", "reload")
        for t in tasks:
            orch.complete_task(t.task_id)
        agent.close()
        orch.close()
        context.close()
