"""The chat UI in real Chromium against a real gateway (offline model).

Run with `pytest -m browser tests/browser`. Skipped when Debian's chromium is not installed.
Set GATEWAY_UI_SCREENSHOTS=<dir> to save screenshots of the main states (docs/screenshots/).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import REST, ROLL_DICE, GatewayThread

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian chromium is not installed (/usr/bin/chromium, or chromium on PATH)"
    ),
]

async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
expect = async_api.expect
Page = async_api.Page

SHOTS = os.environ.get("GATEWAY_UI_SCREENSHOTS")
if SHOTS:
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
TIMEOUT = 10_000  # ms, for every expect()
expect.set_options(timeout=TIMEOUT)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """Answers at once (offline model pacing 0)."""
    gw = GatewayThread(tmp_path_factory.mktemp("ui-fast") / "data", offline_tokens_per_second=0.0).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """Streams 40 tokens a second, for tests that act in the middle of an answer."""
    gw = GatewayThread(tmp_path_factory.mktemp("ui-paced") / "data", offline_tokens_per_second=40.0).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            await b.close()


class Pages:
    """Opens pages (each in its own context, like separate tabs with separate storage) and
    fails the test on any uncaught page error."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.errors: list[str] = []

    async def open(
        self, server: GatewayThread, agent_id: str | None = None, *, width: int = 1280, height: int = 820
    ) -> Page:
        context = await self.browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=1
        )
        page = await context.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        url = f"{server.url}/" + (f"#/agent/{agent_id}" if agent_id else "")
        await page.goto(url)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
        if agent_id:
            await expect(conv(page)).to_have_attribute("data-agent-id", agent_id)
            await expect(conv(page).locator(".conv-title h1")).not_to_have_text("…")
        return page


@pytest_asyncio.fixture(loop_scope="module")
async def pages(browser: Any) -> AsyncIterator[Pages]:
    p = Pages(browser)
    yield p
    assert not p.errors, f"uncaught errors in the page: {p.errors}"


@pytest_asyncio.fixture(loop_scope="module")
async def rest(gateway: GatewayThread) -> AsyncIterator[REST]:
    client = REST(gateway.url)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="module")
async def prest(paced: GatewayThread) -> AsyncIterator[REST]:
    client = REST(paced.url)
    try:
        yield client
    finally:
        await client.close()


# -- helpers -----------------------------------------------------------------------------------


def conv(page: Page) -> Any:
    return page.locator(".conv:not([hidden])")


async def send(page: Page, text: str, *, starts_run: bool = True) -> Any:
    """Type and send a message; returns the locator of the run it starts."""
    runs = conv(page).locator(".run")
    before = await runs.count()
    box = conv(page).locator("textarea")
    await box.fill(text)
    await box.press("Enter")
    if not starts_run:
        return None
    await expect(runs).to_have_count(before + 1)
    return runs.nth(before)


def last_run(page: Page) -> Any:
    return conv(page).locator(".run").last


async def run_id_of(page: Page) -> str:
    await expect(last_run(page)).to_have_attribute("data-run-id", re.compile(r"^run-"))
    return str(await last_run(page).get_attribute("data-run-id"))


async def persisted_text(rest: REST, run_id: str) -> str:
    r = await rest.http.get(f"/v1/runs/{run_id}/messages")
    assert r.status_code == 200, r.text
    return "".join(m["content"] for m in r.json() if m["message_type"] == "assistant_message")


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


async def dice_agent(rest: REST, name: str, *, approval: bool = False) -> dict[str, Any]:
    tool = await rest.tool(ROLL_DICE)
    agent = await rest.agent(
        name=name, tool_ids=[tool["id"]], system="You are a helpful assistant with dice."
    )
    if approval:
        r = await rest.http.patch(
            f"/v1/agents/{agent['id']}/tools/approval/roll_dice", json={"requires_approval": True}
        )
        assert r.status_code == 200, r.text
    return agent


def words(text: str) -> list[str]:
    return text.split()


# -- tests -------------------------------------------------------------------------------------


async def test_send_message_and_see_streamed_markdown_answer(
    gateway: GatewayThread, rest: REST, pages: Pages
) -> None:
    agent = await rest.agent(name="Rivers", system="You answer questions about rivers.")
    page = await pages.open(gateway, agent["id"])
    await expect(conv(page).locator(".thread-empty")).to_contain_text("Start a conversation with Rivers")

    run = await send(
        page,
        'Reply with the message "Rivers **shape** valleys, carry `sediment` and feed [deltas](https://example.org/deltas)."',
    )
    await expect(run).to_have_attribute("data-status", "completed")
    await expect(run.locator(".turn.user .bubble")).to_contain_text("Reply with the message")
    md = run.locator(".md")
    await expect(md.locator("strong")).to_have_text("shape")
    await expect(md.locator("code")).to_have_text("sediment")
    await expect(md.locator("a")).to_have_attribute("target", "_blank")
    await expect(run.locator(".run-foot")).to_contain_text("Completed")
    await expect(run.locator(".run-foot .usage")).to_contain_text("tokens")
    await expect(run.locator(".run-foot .stop-reason")).to_have_text("end of turn")

    run = await send(page, "Write an answer of 60 words about rivers")
    await expect(run).to_have_attribute("data-status", "completed")
    run_id = await run_id_of(page)
    text = (await run.locator(".md").inner_text()).strip()
    assert len(words(text)) == 60
    assert text == (await persisted_text(rest, run_id)).strip()
    # History comes back from REST after a reload, in the same order.
    await page.reload()
    await expect(conv(page).locator(".run")).to_have_count(2)
    await expect(last_run(page).locator(".md")).to_have_text(text)
    await expect(last_run(page).locator(".run-foot")).to_contain_text("Completed")
    await shot(page, "conversation")

    # The renderer sanitises: no markup from the model survives as live HTML.
    run = await send(
        page,
        "Reply with the message \"Hi <img src='x' onerror='window.__xss=1'> <script>window.__xss=2</script>"
        " <a href='javascript:window.__xss=3'>link</a> **there**\"",
    )
    await expect(run).to_have_attribute("data-status", "completed")
    await expect(run.locator(".md strong")).to_have_text("there")
    assert await run.locator(".md img, .md script, .md [onerror]").count() == 0
    assert "javascript:" not in (await run.locator(".md").inner_html())
    assert await page.evaluate("window.__xss") is None


async def test_tool_call_card_with_result(gateway: GatewayThread, rest: REST, pages: Pages) -> None:
    agent = await dice_agent(rest, "Dice")
    page = await pages.open(gateway, agent["id"])
    run = await send(page, "Call the roll_dice tool with 16 sides")
    await expect(run).to_have_attribute("data-status", "completed")
    cards = run.locator(".tool-card")
    await expect(cards).to_have_count(1)
    card = cards.first
    await expect(card).to_have_attribute("data-status", "success")
    await expect(card.locator(".tool-name")).to_have_text("roll_dice")
    await expect(card.locator(".badge")).to_have_text("Done")
    await expect(card.locator(".tool-args")).to_contain_text('"num_sides": 16')
    value = int((await card.locator(".tool-result").inner_text()).strip())
    assert 1 <= value <= 16
    await expect(run.locator(".md").last).to_have_text(f"The tool returned {value}.")
    await expect(run.locator(".run-foot .steps")).to_have_text("2 steps")


async def test_three_parallel_calls_are_three_cards(gateway: GatewayThread, rest: REST, pages: Pages) -> None:
    agent = await dice_agent(rest, "Parallel dice")
    page = await pages.open(gateway, agent["id"])
    run = await send(page, "Please call the roll_dice tool three times in parallel")
    await expect(run).to_have_attribute("data-status", "completed")
    cards = run.locator(".tool-card")
    await expect(cards).to_have_count(3)
    ids = {await cards.nth(i).get_attribute("data-tool-call-id") for i in range(3)}
    assert len(ids) == 3
    results = []
    for i in range(3):
        await expect(cards.nth(i)).to_have_attribute("data-status", "success")
        results.append((await cards.nth(i).locator(".tool-result").inner_text()).strip())
    await expect(run.locator(".md").last).to_have_text(f"Results: {', '.join(results)}.")
    await shot(page, "tool-cards")


async def test_approve_and_deny_from_the_dialog(gateway: GatewayThread, rest: REST, pages: Pages) -> None:
    agent = await dice_agent(rest, "Careful dice", approval=True)
    page = await pages.open(gateway, agent["id"])
    await expect(conv(page).locator(".conv-tools .chip.gated")).to_have_text("roll_dice")
    run = await send(page, "Please call the roll_dice tool twice in parallel with 20 sides")
    await expect(run).to_have_attribute("data-status", "awaiting_approval")
    cards = run.locator(".tool-card")
    await expect(cards).to_have_count(2)
    first, second = cards.nth(0), cards.nth(1)
    for card in (first, second):
        await expect(card).to_have_attribute("data-status", "pending")
        await expect(card.locator(".approval")).to_be_visible()
        await expect(card.locator(".approval-question")).to_contain_text("roll_dice")
        await expect(card.locator(".tool-args")).to_contain_text('"num_sides": 20')
    await expect(conv(page).locator(".approval-bar")).to_contain_text("2 tool calls")
    # Keyboard: the first pending card's Approve button has the focus.
    await expect(first.locator('[data-action="approve"]')).to_be_enabled()
    await expect(first.locator('[data-action="approve"]')).to_be_focused()
    await shot(page, "approval")

    await page.keyboard.press("Enter")  # approve the first call with the keyboard
    await expect(first.locator(".approval")).to_be_hidden()
    await expect(first.locator(".approval-outcome")).to_have_text("Approved")
    await second.locator(".approval-reason").fill("not today")
    await second.locator('[data-action="deny"]').click()

    await expect(run).to_have_attribute("data-status", "completed")
    await expect(second.locator(".approval-outcome")).to_have_text("Denied — not today")
    await expect(second).to_have_attribute("data-status", "denied")
    await expect(second.locator(".tool-result")).to_contain_text("denied")
    await expect(first).to_have_attribute("data-status", "success")
    value = (await first.locator(".tool-result").inner_text()).strip()
    await expect(run.locator(".md").last).to_have_text(f"Results: {value}, denied.")
    await expect(conv(page).locator(".approval-bar")).to_be_hidden()


async def test_decision_in_one_page_closes_the_dialog_in_another(
    gateway: GatewayThread, rest: REST, pages: Pages
) -> None:
    agent = await dice_agent(rest, "Shared dice", approval=True)
    a = await pages.open(gateway, agent["id"])
    await send(a, "Call the roll_dice tool with 12 sides")
    await expect(last_run(a)).to_have_attribute("data-status", "awaiting_approval")

    # A second page (another tab) opened later gets the pending approval from the replay.
    b = await pages.open(gateway, agent["id"])
    card_b = last_run(b).locator(".tool-card")
    await expect(card_b).to_have_attribute("data-status", "pending")
    await expect(card_b.locator(".approval")).to_be_visible()
    await expect(card_b.locator(".tool-args")).to_contain_text('"num_sides": 12')
    await expect(card_b.locator('[data-action="approve"]')).to_be_enabled()

    await last_run(a).locator('.tool-card [data-action="approve"]').click()
    await expect(card_b.locator(".approval")).to_be_hidden()
    await expect(card_b.locator(".approval-outcome")).to_have_text("Approved")
    await expect(last_run(b)).to_have_attribute("data-status", "completed")
    await expect(card_b).to_have_attribute("data-status", "success")
    await expect(last_run(a).locator(".tool-card")).to_have_attribute("data-status", "success")
    await expect(last_run(a)).to_have_attribute("data-status", "completed")

    # A pending approval also comes back after a reload of the page that asked.
    await send(a, "Call the roll_dice tool with 8 sides")
    await expect(last_run(a)).to_have_attribute("data-status", "awaiting_approval")
    await a.reload()
    card = last_run(a).locator(".tool-card")
    await expect(card).to_have_attribute("data-status", "pending")
    await expect(card.locator(".tool-args")).to_contain_text('"num_sides": 8')
    await card.locator(".approval-reason").fill("no")
    await card.locator(".approval-reason").press("Enter")  # Enter with a reason denies
    await expect(card.locator(".approval-outcome")).to_have_text("Denied — no")
    await expect(last_run(a)).to_have_attribute("data-status", "completed")


async def test_stop_mid_answer_and_after_step(paced: GatewayThread, prest: REST, pages: Pages) -> None:
    agent = await dice_agent(prest, "Storyteller")
    page = await pages.open(paced, agent["id"])
    run = await send(page, "Write a long answer of 300 words about rivers")
    await expect(run.locator(".md.streaming")).to_be_visible()
    await expect(run.locator(".md")).to_contain_text(re.compile(r"(\S+\s+){8}"))
    stop = conv(page).locator("button.stop")
    await expect(stop).to_be_visible()
    await expect(conv(page).locator("button.stop-step")).to_be_visible()
    await stop.click()
    await expect(run).to_have_attribute("data-status", "cancelled")
    await expect(run.locator(".run-foot .status-chip")).to_have_text("Stopped")
    await expect(run.locator(".md.streaming")).to_have_count(0)
    run_id = await run_id_of(page)
    text = (await run.locator(".md").inner_text()).strip()
    assert 8 <= len(words(text)) < 300
    assert text == (await persisted_text(prest, run_id)).strip()
    await expect(conv(page).locator("button.send")).to_be_visible()
    await shot(page, "stopped")

    # The conversation stays usable, and "stop after this step" lets the step finish.
    run = await send(page, "[[tps:5]] Call the roll_dice tool with 16 sides")  # a slow first step
    await expect(run.locator(".md").first).to_contain_text("I'll")
    await conv(page).locator("button.stop-step").click()
    await expect(run).to_have_attribute("data-status", "cancelled")
    await expect(run.locator(".tool-card")).to_have_attribute("data-status", "success")
    assert await run.locator(".md").count() == 1  # no second step
    await send(page, 'Reply with the message "Still here."')
    await expect(last_run(page)).to_have_attribute("data-status", "completed")
    await expect(last_run(page).locator(".md")).to_have_text("Still here.")


async def test_socket_killed_mid_answer_loses_and_repeats_nothing(
    paced: GatewayThread, prest: REST, pages: Pages
) -> None:
    agent = await prest.agent(name="Resilient")
    a = await pages.open(paced, agent["id"])
    # (evaluate() calls a function it gets back, such as on()'s unsubscriber: hence the `; 0`)
    await a.evaluate(
        "window.__states = []; gatewayClient.on('state', (d) => window.__states.push(d.state)); 0"
    )
    # Record the resubscriptions the client sends.
    await a.evaluate(
        """() => {
          window.__subs = [];
          const request = gatewayClient.request.bind(gatewayClient);
          gatewayClient.request = (type, fields, options) => {
            if (type === "run.subscribe") window.__subs.push(fields);
            return request(type, fields, options);
          };
        }"""
    )
    run = await send(a, "Write an answer of 200 words about rivers")
    await expect(run.locator(".md")).to_contain_text(re.compile(r"(\S+\s+){5}"))

    # Another tab opens the conversation mid-answer and follows it live.
    b = await pages.open(paced, agent["id"])
    await expect(last_run(b).locator(".md.streaming")).to_be_visible()

    # The network drops (1006) ...
    assert await a.evaluate("window.gatewayClient.dropConnection()") is True
    await expect(a.locator("#conn")).to_have_attribute("data-state", "connected")
    await expect(run.locator(".md")).to_contain_text(re.compile(r"(\S+\s+){30}"))
    # ... and the server closes it as a slow consumer (goodbye + 4408).
    conns = list(paced.gateway.connections)
    assert conns
    for c in conns:
        paced.loop.call_soon_threadsafe(c.close, 4408, "slow consumer: reconnect and resubscribe with after")

    await expect(run).to_have_attribute("data-status", "completed", timeout=15_000)
    await expect(last_run(b)).to_have_attribute("data-status", "completed", timeout=15_000)
    states = await a.evaluate("window.__states")
    assert states.count("reconnecting") >= 2 and states[-1] == "connected", states
    run_id = await run_id_of(a)
    subs = await a.evaluate("window.__subs")
    epoch = (await prest.http.get(f"/v1/runs/{run_id}")).json()["epoch"]
    assert len(subs) == 2, subs  # one per reconnect, resuming after the last seq seen
    assert all(s["run_id"] == run_id and s["after"] > 5 and s["epoch"] == epoch for s in subs), subs
    assert subs[1]["after"] > subs[0]["after"], subs
    expected = (await persisted_text(prest, run_id)).strip()
    assert len(words(expected)) == 200
    for page in (a, b):
        assert (await last_run(page).locator(".md").inner_text()).strip() == expected
        assert await page.evaluate(f"window.gatewayClient.getRun({run_id!r}).text") == expected
    await expect(a.locator("#conn")).to_have_attribute("data-state", "connected")


async def test_connection_state_and_errors_in_words(gateway: GatewayThread, rest: REST, pages: Pages) -> None:
    agent = await rest.agent(name="Short lived")
    page = await pages.open(gateway, agent["id"])
    conn = page.locator("#conn")
    # A close code the client must not retry after: it says so and stays offline.
    await page.evaluate("window.gatewayClient.dropConnection(4401, 'authentication failed')")
    await expect(conn).to_have_attribute("data-state", "offline")
    await expect(page.locator("#banner")).to_contain_text("Authentication failed")
    await page.wait_for_timeout(700)
    await expect(conn).to_have_attribute("data-state", "offline")
    await page.locator("#banner button", has_text="Connect").click()
    await expect(conn).to_have_attribute("data-state", "connected")
    await expect(page.locator("#banner")).to_be_hidden()
    # A transient one: it reconnects by itself.
    await page.evaluate("window.gatewayClient.dropConnection(1011)")
    await expect(conn).to_have_attribute("data-state", "connected")

    # An error frame is shown with its message.
    r = await rest.http.delete(f"/v1/agents/{agent['id']}")
    assert r.status_code == 200, r.text
    await send(page, "Hello?", starts_run=False)
    toast = page.locator(".toast.error")
    await expect(toast).to_contain_text("Could not send")
    await expect(toast).to_contain_text("not found")
    await expect(conv(page).locator("textarea")).to_have_value("Hello?")


async def test_create_agent_with_tools_and_approval(gateway: GatewayThread, rest: REST, pages: Pages) -> None:
    page = await pages.open(gateway)
    await page.locator("#new-agent").click()
    dialog = page.locator("#agent-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator('input[name="model"]')).to_have_value("anthropic/claude-sonnet-4-6")
    await dialog.locator('input[name="name"]').fill("Dice master")
    await dialog.locator('textarea[name="system"]').fill("You roll dice.")
    await dialog.locator(".add-tool summary").click()
    await dialog.locator('textarea[name="source"]').fill(ROLL_DICE)
    await dialog.locator('[data-action="add-tool"]').click()
    row = dialog.locator('.tool-row[data-tool-name="roll_dice"]')
    await expect(row.locator(".tool-attach")).to_be_checked()
    await row.locator(".switch").click()
    await expect(row.locator(".tool-approval")).to_be_checked()
    await shot(page, "agent-dialog")
    await dialog.locator('[data-action="save"]').click()
    await expect(dialog).to_be_hidden()

    await expect(conv(page).locator(".conv-title h1")).to_have_text("Dice master")
    await expect(conv(page).locator(".conv-tools .chip.gated")).to_have_text("roll_dice")
    agent_id = await conv(page).get_attribute("data-agent-id")
    r = await rest.http.get(f"/v1/agents/{agent_id}")
    data = r.json()
    assert data["model"] == "anthropic/claude-sonnet-4-6" and data["system"] == "You roll dice."
    assert [t["name"] for t in data["tools"]] == ["roll_dice"]
    assert data["tool_rules"] == [{"tool_name": "roll_dice", "type": "requires_approval"}]

    # Several conversations open at once, on one socket; the open tabs survive a reload.
    other = await rest.agent(name="Second")
    await page.reload()
    await expect(page.locator(".tab")).to_have_count(1)
    await expect(conv(page).locator(".conv-title h1")).to_have_text("Dice master")
    await page.locator("#agent-list .agent", has_text="Second").click()
    await expect(page.locator(".tab")).to_have_count(2)
    await send(page, 'Reply with the message "one"')
    await expect(last_run(page).locator(".md")).to_have_text("one")
    await page.locator(".tab", has_text="Dice master").locator(".tab-main").click()
    await send(page, "Call the roll_dice tool with 6 sides")
    await expect(last_run(page)).to_have_attribute("data-status", "awaiting_approval")
    await page.locator(".tab", has_text="Second").locator(".tab-main").click()
    await expect(conv(page)).to_have_attribute("data-agent-id", other["id"])
    await expect(page.locator(".tab", has_text="Dice master")).to_have_attribute("data-status", "approval")
    assert await page.evaluate("window.gatewayClient.state") == "connected"


FOLD_SCRIPT = (Path(__file__).parent / "fold_check.js").read_text()


async def test_client_folds_events_once_with_merged_deltas(gateway: GatewayThread, pages: Pages) -> None:
    page = await pages.open(gateway)
    out = await page.evaluate(FOLD_SCRIPT)
    assert out["applied"] == [True, True, True, True, False, False, True, True] + [True] * 11
    assert out["text"] == "Hello, world"
    assert out["status"] == "completed" and out["lastSeq"] == 18
    assert out["usage"]["totalTokens"] == 8 and out["usage"]["stepCount"] == 1
    assert out["approvalB"] == {"state": "denied", "reason": "no"}
    expected = [
        ["user", "hi", None, None, None],
        ["text", "Hello, world", None, None, None],
        ["tool", None, "a", '{"x": 1}', "success"],
        ["tool", None, "b", '{"y": 2}', "error"],
    ]
    assert out["live"] == expected
    assert out["rest"] == expected  # the live fold matches the persisted messages
    assert out["groups"] == [["r1", 2], ["r2", 1], ["r1", 1]]
