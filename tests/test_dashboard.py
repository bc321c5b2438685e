"""The admin dashboard in a real headless Chromium (Debian's), driven by Playwright.

The page is served by the admin port with a token (the browser is given it as HTTP Basic
credentials, as a person typing it into the browser's prompt would); it must load with no
console error, show the sessions this test created, sort, draw each session's frames/s, and
end a session from its button, which then disappears from the table. A screenshot is saved
under the test's temporary folder (docs/dashboard.png, shown in docs/telemetry.md, is one such).
"""

from __future__ import annotations

import asyncio

import pytest
from picows import WSMsgType

from support import arun, debian_binary
from test_admin_sessions import TOKEN, Stage

pytestmark = pytest.mark.system      # Debian's chromium, installed by the test when missing

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions"]


async def until(page, predicate: str, timeout: float = 10) -> None:
    """Poll a JavaScript predicate from here: the page's CSP (no eval) rules out
    wait_for_function, which evaluates its predicate as a string inside the page."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await page.evaluate(f"() => Boolean({predicate})"):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {predicate}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(960)            # covers a first-time apt-get install of chromium
def test_the_dashboard_shows_sorts_and_ends_live_sessions(tmp_path):
    chromium = debian_binary("chromium", "chromium")
    from playwright.async_api import async_playwright

    async def main():
        async with Stage() as stage, async_playwright() as playwright:
            clients = [await stage.client("voice.acme"), await stage.client("voice.acme"),
                       await stage.client("chat.acme")]
            ids = {s.id for s in stage.relay.sessions}
            assert len(ids) == 3

            async def talk():
                while True:
                    for transport, _ in clients[:2]:
                        transport.send(WSMsgType.BINARY, bytes(160))
                    await asyncio.sleep(0.02)
            talker = asyncio.ensure_future(talk())

            browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                       args=CHROMIUM_ARGS)
            context = await browser.new_context(http_credentials={"username": "ops", "password": TOKEN},
                                                viewport={"width": 1500, "height": 700})
            page = await context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))

            await page.goto(f"http://127.0.0.1:{stage.admin.port}/")
            await until(page, "document.querySelectorAll('#sessions tbody tr').length === 3")
            shown = await page.eval_on_selector_all("#sessions tbody tr", "rows => rows.map(r => r.dataset.sessionId)")
            assert set(shown) == ids
            agents = await page.eval_on_selector_all(
                "#agents tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
            assert sorted(agents) == [["chat", "acme", "1"], ["voice", "acme", "2"]]

            # a few refreshes: the talking sessions' sparklines have points, and frames grow
            await until(page, "[...document.querySelectorAll('#sessions polyline')]"
                              ".filter(p => p.getAttribute('points').split(' ').length >= 3).length >= 2")

            # sort by frames (descending): the silent chat session comes last
            await page.click("th[data-sort=frames]")
            await until(page, "document.querySelector('th[data-sort=frames]').classList.contains('sorted')")
            order = await page.eval_on_selector_all("#sessions tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
            assert order[-1] == "chat.acme", order

            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000

            # end the chat session from its row: it disappears, and its client got 1008
            chat = next(s for s in stage.relay.sessions if s.agent.name == "chat")
            await page.click(f"tr[data-session-id='{chat.id}'] button")
            await until(page, f"!document.querySelector(\"tr[data-session-id='{chat.id}']\") && "
                              "document.querySelectorAll('#sessions tbody tr').length === 2")
            chat_rec = clients[2][1]
            await asyncio.wait_for(chat_rec.disconnected.wait(), 10)
            assert chat_rec.close_frames()[0].payload[:2] == (1008).to_bytes(2, "big")
            assert problems == []
            talker.cancel()
            await browser.close()
    arun(main(), timeout=120)
