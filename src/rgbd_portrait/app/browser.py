"""Using the app in a real browser: a local Chromium, headless, driven by Playwright, which is given the browser's
path and so downloads none. The end-to-end test and the latency benchmark share it.

    with open_app_page(app.url, find_chromium()) as page:
        seconds = page.upload_portrait("astronaut.png")   # until its depth image shows
        page.show_tab("Relight")
        seconds = page.move_azimuth(60)                     # until the relit image changes
        page.screenshot("app.png")
        page.external_requests                               # what the page asked of any other host: nothing

Playwright is a development dependency (`pip install '.[dev]'`); Chromium comes from the system (Debian:
`apt-get install chromium`), or from the path in `RGBD_PORTRAIT_CHROMIUM`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM_VARIABLE = "RGBD_PORTRAIT_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Headless, as root in a container, with nothing started that would reach the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 900}
# Every wait for the page, generous for a loaded 2-core machine.
TIMEOUT_SECONDS = 120.0
# True once the image in the element `selector` has a source other than `previous` and is decoded.
_NEW_IMAGE = """([selector, previous]) => {
    const image = document.querySelector(selector);
    return image !== null && image.src !== previous && image.complete && image.naturalWidth > 0;
}"""


def find_chromium() -> str | None:
    """The browser in `RGBD_PORTRAIT_CHROMIUM`, else the first Chromium on the PATH; None if there is none."""
    given = os.environ.get(CHROMIUM_VARIABLE)
    if given:
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class AppPage:
    """The app's page in the browser, with what it requested from hosts other than the app's."""

    def __init__(self, page, url: str):
        self.page = page
        self.external_requests: list[str] = []
        host = urlsplit(url).netloc
        page.on("request", lambda request: self._note(request.url, host))

    def _note(self, url: str, host: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != host:
            self.external_requests.append(url)

    def image_source(self, element_id: str) -> str | None:
        """The address of the image the component `element_id` shows, or None."""
        image = self.page.locator(f"#{element_id} img")
        return image.first.get_attribute("src") if image.count() else None

    def _wait_for_new_image(self, element_id: str, previous: str | None) -> None:
        self.page.wait_for_function(_NEW_IMAGE, arg=[f"#{element_id} img", previous], polling=20)

    def upload_portrait(self, path: str | os.PathLike) -> float:
        """Upload a portrait (removing the one shown first, as a user does); the seconds until its depth image
        shows."""
        clear = self.page.locator("#portrait button[aria-label=Clear]")
        if clear.count():
            clear.click()
            self.page.wait_for_selector("#depth-image img", state="detached")
        start = time.perf_counter()
        self.page.set_input_files("#portrait input[type=file]", str(path))
        self._wait_for_new_image("depth-image", None)
        return time.perf_counter() - start

    def show_tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def wait_for_relit(self) -> str:
        """The relit image's address, once there is one."""
        self._wait_for_new_image("relit", None)
        return self.image_source("relit")

    def move_azimuth(self, degrees: float) -> float:
        """Set the lamp's azimuth as a drag would; the seconds until the relit image changes."""
        previous = self.wait_for_relit()
        start = time.perf_counter()
        self.page.locator("#azimuth input[type=range]").fill(f"{degrees:g}")
        self._wait_for_new_image("relit", previous)
        return time.perf_counter() - start

    def screenshot(self, path: str | os.PathLike) -> Path:
        self.page.screenshot(path=str(path), full_page=True)
        return Path(path)


@contextmanager
def open_app_page(url: str, chromium: str) -> Iterator[AppPage]:
    """The app at `url` loaded in a fresh headless `chromium` profile, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="rgbd-portrait-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=list(CHROMIUM_FLAGS), viewport=VIEWPORT
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_SECONDS * 1000)
            app_page = AppPage(page, url)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#portrait input[type=file]", state="attached")
            yield app_page
        finally:
            context.close()
