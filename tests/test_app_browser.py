"""`rgbd-portrait app` end to end in a real browser: headless Chromium (the system's, through Playwright) loads the
page served with the shipped default model, uploads the astronaut, waits for its depth, moves the relight azimuth,
sees the relit image change and saves a screenshot; the page asks nothing of any other host.

`.ci/run` installs Debian's chromium when it is missing; elsewhere this test skips, saying why."""

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed: pip install '.[app]'")
pytest.importorskip("playwright", reason="Playwright is not installed: pip install '.[dev]'")
pytest.importorskip("skimage", reason="scikit-image (the astronaut) is not installed: pip install '.[dev]'")

import httpx  # noqa: E402  (a Gradio dependency)

from rgbd_portrait.app.browser import CHROMIUM_VARIABLE, find_chromium, open_app_page  # noqa: E402
from rgbd_portrait.app.server import start_app  # noqa: E402
from rgbd_portrait.data.image_io import write_rgb_png  # noqa: E402
from rgbd_portrait.demo.portraits import PUBLIC_PORTRAITS  # noqa: E402
from rgbd_portrait.pipelines import RGBDPortraitPipeline  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason=f"no Chromium browser: apt-get install chromium (Debian), or set {CHROMIUM_VARIABLE}=/path/to/chromium",
)


@pytest.fixture(scope="module")
def app():
    pipeline = RGBDPortraitPipeline.from_pretrained()
    pipeline.set_progress_bar_config(disable=True)
    running = start_app(pipeline, port=0)
    yield running
    running.close()


def _fetched(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=60).content)).convert("RGB"), dtype=np.int16)


def test_upload_depth_relight_and_screenshot_in_chromium(app, tmp_path):
    (astronaut,) = [photo for photo in PUBLIC_PORTRAITS if photo.name == "astronaut"]
    portrait = write_rgb_png(tmp_path / "astronaut.png", astronaut.load())
    with open_app_page(app.url, CHROMIUM) as page:
        page.upload_portrait(portrait)
        depth = _fetched(page.image_source("depth-image"))
        assert depth.shape == (128, 128, 3) and depth.std() > 0

        page.show_tab("Relight")
        before = page.wait_for_relit()
        page.move_azimuth(70)
        after = page.image_source("relit")
        assert after != before
        assert np.abs(_fetched(after) - _fetched(before)).mean() > 0.5

        screenshot = page.screenshot(tmp_path / "app.png")
        assert page.external_requests == []
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.width >= 1000
