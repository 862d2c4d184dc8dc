"""The built book in headless Chromium: chapter 6's temperature slider works, and no page uses the network.

The book is served on 127.0.0.1 and opened in Debian's Chromium, driven by Playwright's Python
package (no browser download). `make setup-browser` (part of `make test`) installs both.
"""

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The figure with a slider: plotly.js keeps the figure on its element (`data`, `layout`).
FIND_SLIDER_FIGURE = "[...document.querySelectorAll('.js-plotly-plot')].find(g => g.layout?.sliders?.length)"
READ_FIGURE = f"""() => {{
    const g = {FIND_SLIDER_FIGURE};
    return {{active: g.layout.sliders[0].active, bars: Array.from(g.data[0].y),
             title: g.layout.title.text, text: g.layout.annotations[0].text}};
}}"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature of the method it overrides
        pass


@pytest.fixture(scope="module")
def server(book_html):
    handler = functools.partial(QuietHandler, directory=str(book_html))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed; run `make setup-browser` (part of `make test`)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not at {CHROMIUM}; run `make setup-browser` (it installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


class Visit:
    """A browser tab that records every request leaving 127.0.0.1 (and blocks it) and every failed one."""

    def __init__(self, browser, server: str):
        self.server = server
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.failed: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("response", self._response)

    def _route(self, route):
        if route.request.url.startswith(self.server + "/"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _response(self, response):
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.failed.append(f"{response.status} {response.url}")

    def open(self, path: str) -> None:
        self.page.goto(f"{self.server}/{path}", wait_until="networkidle")


def book_pages(html: Path) -> list[str]:
    skip = ("_static", "_sources", "_images", "vendor")
    return sorted(str(p.relative_to(html)) for p in html.rglob("*.html") if p.relative_to(html).parts[0] not in skip)


def test_every_page_loads_everything_from_the_book_itself(book_html, server, browser):
    pages = book_pages(book_html)
    assert "notebooks/06_generating_text.html" in pages
    visit = Visit(browser, server)
    for path in pages:
        visit.open(path)
    visit.context.close()
    assert visit.outside == [], "requests outside 127.0.0.1"
    assert visit.failed == [], "requests that failed"


def test_math_and_widgets_render_from_the_vendored_scripts(server, browser):
    visit = Visit(browser, server)
    visit.open("notebooks/05_training_a_gpt.html")
    visit.page.wait_for_function("() => document.querySelector('mjx-container') !== null", timeout=15_000)
    visit.open("notebooks/06_generating_text.html")
    visit.page.wait_for_function("() => document.querySelector('.widget-slider') !== null", timeout=15_000)
    visit.context.close()


def test_temperature_slider_changes_the_figure(server, browser):
    visit = Visit(browser, server)
    page = visit.page
    visit.open("notebooks/06_generating_text.html")
    page.wait_for_function(f"() => {FIND_SLIDER_FIGURE} !== undefined", timeout=15_000)
    page.evaluate(f"() => {FIND_SLIDER_FIGURE}.setAttribute('data-test', 'temperature-figure')")
    figure = page.locator("[data-test=temperature-figure]")
    figure.scroll_into_view_if_needed()
    before = page.evaluate(READ_FIGURE)

    grip = figure.locator(".slider-grip-rect").bounding_box()
    rail = figure.locator(".slider-rail-rect").bounding_box()
    page.mouse.move(grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2)
    page.mouse.down()
    page.mouse.move(rail["x"] + rail["width"] - 2, grip["y"] + grip["height"] / 2, steps=12)
    page.mouse.up()
    page.wait_for_function(f"() => {FIND_SLIDER_FIGURE}.layout.sliders[0].active !== {before['active']}")
    after = page.evaluate(READ_FIGURE)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    figure.screenshot(path=str(SCREENSHOTS / "06_temperature_slider.png"))
    visit.context.close()

    assert after["active"] > before["active"], "dragging right should pick a higher temperature"
    assert after["bars"] != before["bars"], "the next-character distribution did not change"
    assert max(after["bars"]) < max(before["bars"]), "a higher temperature should flatten the distribution"
    assert after["text"] != before["text"] and after["title"] != before["title"]
    assert visit.outside == [] and visit.failed == []


def generate_in_the_box(page, prompt: str, length: int) -> str:
    """Type a prompt into chapter 6's live box, press Generate, wait for the text; returns the box's text."""
    page.wait_for_selector(".minigpt-sampler[data-state=ready]", timeout=15_000)
    box = page.locator(".minigpt-sampler")
    box.scroll_into_view_if_needed()
    box.locator("textarea[name=prompt]").fill(prompt)
    box.locator("input[name=length]").fill(str(length))
    box.locator("button[name=generate]").click()
    page.wait_for_selector(".minigpt-sampler[data-state=ready]", timeout=60_000)
    assert "characters per second" in box.locator(".minigpt-status").text_content()
    return box.locator(".minigpt-output").text_content()


def test_chapter_6_box_writes_with_the_chapters_model(server, browser):
    visit = Visit(browser, server)
    visit.open("notebooks/06_generating_text.html")
    written = generate_in_the_box(visit.page, "JULIET:\n", 300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    visit.page.locator(".minigpt-sampler").screenshot(path=str(SCREENSHOTS / "06_live_sampler.png"))
    visit.context.close()
    assert written.startswith("JULIET:\n") and len(written) == len("JULIET:\n") + 300
    assert visit.outside == [] and visit.failed == []


def test_chapter_6_box_works_from_disk(book_html, browser):
    context = browser.new_context()
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((book_html / "notebooks" / "06_generating_text.html").as_uri())
    written = generate_in_the_box(page, "ROMEO:\n", 100)
    context.close()
    assert len(written) == len("ROMEO:\n") + 100
    assert [url for url in requests if not url.startswith("file://")] == []


def test_chapter_8_chat_box_answers(server, browser):
    visit = Visit(browser, server)
    page = visit.page
    visit.open("notebooks/08_supervised_finetuning.html")
    page.wait_for_selector(".minigpt-chat[data-state=ready]", timeout=15_000)
    box = page.locator(".minigpt-chat")
    box.locator("input[name=message]").fill("What is 12+30?")
    box.locator("input[name=message]").press("Enter")
    page.wait_for_selector(".minigpt-chat[data-state=ready]", timeout=60_000)
    answer = box.locator(".minigpt-assistant").text_content()
    visit.context.close()
    assert answer.strip(), "the chat model wrote nothing"
    assert visit.outside == [] and visit.failed == []
