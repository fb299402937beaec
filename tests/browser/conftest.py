"""The browser the browser tests drive: Debian's Chromium (/usr/bin/chromium) through Playwright, headless, never a
browser Playwright downloads."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
#: Milliseconds Playwright waits for what a page shows: a worker's send, a refresh of the operations
#: page (every 2 s) and Flower's first heartbeats all land within a few seconds.
PATIENCE_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `apt-get install -y chromium` (Debian's package) and run the tests again"
        )
    # Playwright's sync API keeps an event loop running in this thread, and Django then refuses every
    # query made here ("you cannot call this from an async context"); the queries are ordinary blocking ones.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        # --no-sandbox: the tests run as root, where Chromium refuses its own sandbox.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    """A fresh browser profile per test, closed before the database is emptied (its page polls the server)."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(PATIENCE_MS)
    page = context.new_page()
    yield page
    context.close()
