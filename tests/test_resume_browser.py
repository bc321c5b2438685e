"""Session resume from a browser (docs/resume.md): headless Chromium runs the page snippet of
docs/resume.md as it is written there (only its addresses and key changed): it calls the start
API, connects, loses its connection to a TCP proxy's reset, and comes back with the start API's
``resumeToken``. Every message of a bot streaming at 50 a second arrives once and in order, and
the bot keeps its one connection. Both pumps."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from resume_support import RESET, CuttingProxy, StreamingBot
from support import arun, debian_binary, free_port, relay_config, start_relay
from test_dashboard import CHROMIUM_ARGS, until
from wsrelay.config import AuthConfig

pytestmark = pytest.mark.system      # Debian's chromium, installed by the test when missing

PAGE_SNIPPET = re.search(r"```text\n(const start = .*?)```", (Path(__file__).resolve().parent.parent / "docs"
                                                             / "resume.md").read_text(), re.S)


@pytest.mark.timeout(960)            # covers a first-time apt-get install of chromium
def test_a_browser_page_resumes_with_the_start_apis_resume_token(pump):
    chromium = debian_binary("chromium", "chromium")
    from playwright.async_api import async_playwright
    assert PAGE_SNIPPET is not None, "docs/resume.md has no browser snippet"

    async def main() -> None:
        bot = await StreamingBot().start()
        page_port = free_port()
        config = relay_config({"echo.demo": [bot.url]}, cors_origins=(f"http://127.0.0.1:{page_port}",))
        agents = tuple(replace(a, resume_seconds=5.0, websocket_auth="token", public_keys=("pk_browser",))
                       for a in config.agents)
        relay = await start_relay(replace(config, agents=agents,
                                          auth=AuthConfig(keys={"k": "s" * 32}, active_key="k")), pump)
        proxy = await CuttingProxy(relay.port).start()
        script = (PAGE_SNIPPET.group(1)
                  .replace("https://relay.example.com", f"http://127.0.0.1:{proxy.port}")
                  .replace("/v1/public/my-agent/", "/v1/public/echo/")
                  .replace("pk_live_abc123", "pk_browser"))
        html = ("<!doctype html><meta charset=utf-8><title>resume</title><script>"
                "window.got = []; window.opened = 0; function show(data) { window.got.push(data); }\n"
                "const RealWebSocket = WebSocket;\n"
                "window.WebSocket = function (url) { window.opened += 1; return new RealWebSocket(url); };\n"
                f"(async () => {{\n{script}\n}})();</script>")
        async def serve_page(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", serve_page)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", page_port).start()
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                           args=CHROMIUM_ARGS)
                page = await browser.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                await page.goto(f"http://127.0.0.1:{page_port}/")
                await until(page, "window.got.length >= 15")
                proxy.cut(RESET)
                await until(page, "window.opened === 2 && window.got.length >= 40", timeout=15)
                got = [int(x) for x in await page.evaluate("window.got")]
                assert got == list(range(1, len(got) + 1)), got
                assert len(bot.sessions) == 1 and not bot.sessions[0].disconnected.is_set()
                assert relay.metrics.resumes == {("echo", "demo"): 1}
                assert problems == []
                await browser.close()
        finally:
            bot.stop()
            proxy.close()
            await runner.cleanup()
            await relay.stop()
            bot.close()

    arun(main(), timeout=120)
