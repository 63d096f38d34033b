"""The web demo (`elt serve`), driven in headless Chromium: choose a class, press Generate, read the
image back. Needs gradio and selenium (the dev extra) and Debian's chromium + chromium-driver
(`make setup` installs them where apt is usable); skipped with the reason otherwise."""
import io
import shutil
import urllib.request

import numpy as np
import pytest

from conftest import free_port

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_generator_answers_at_every_loop_count(masked_run):
    from elt.apps.serve import Generator

    gen = Generator(masked_run, n=3)
    for loops in (1, 4, 6):
        image, status = gen("7", loops, seed=1)
        assert image.dtype == np.uint8 and image.shape == (8 * 16, 3 * 8 * 16)  # 3 digits, upscaled x16
        assert f"L={loops}" in status and "GFLOPs" in status
    assert np.array_equal(gen("7", 2, seed=1)[0], gen("7", 2, seed=1)[0])  # same seed, same images
    with pytest.raises(ValueError, match="outside 1..6"):
        gen("7", 9)
    with pytest.raises(ValueError, match="unknown class"):
        gen("cat", 2)


def test_generator_serves_a_video_run_as_animated_clips(video_run):
    from PIL import Image

    from elt.apps.serve import Generator

    gen = Generator(video_run, n=2)
    for loops in (1, 4):
        path, status = gen("Trouser", loops, seed=1)
        assert f"2 clips at L={loops}" in status and "GFLOPs" in status
        with Image.open(path) as im:  # two 36×36 clips side by side, upscaled ×3, every frame
            assert im.format == "GIF" and im.n_frames == 9 and im.size == (2 * 36 * 3, 36 * 3)


def _browser():
    pytest.importorskip("gradio", reason="the web demo needs gradio (pip install -e '.[serve]')")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (dev extra)")
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make setup installs them as root)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1000,1100"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _generate_in_browser(browser, port: int, class_name: str, loops: int | None = None) -> tuple[str, str]:
    """Open the app, pick `class_name` (and move the slider to `loops`), press Generate: (status, image src)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"http://127.0.0.1:{port}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#class label"))
    choice = next(el for el in browser.find_elements(By.CSS_SELECTOR, "#class label") if el.text.strip() == class_name)
    choice.click()
    if loops is not None:
        box = browser.find_element(By.CSS_SELECTOR, "#loops input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(loops), Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#output img"))
    wait.until(lambda b: "L=" in b.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value"))
    status = browser.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
    return status, browser.find_element(By.CSS_SELECTOR, "#output img").get_attribute("src")


def test_video_web_demo_in_headless_chromium(video_run):
    from PIL import Image

    from elt.apps.serve import serve

    browser = _browser()
    port = free_port()
    app = serve(video_run, port=port, n=2, block=False)
    try:
        status, src = _generate_in_browser(browser, port, "Bag", loops=2)
        assert status.startswith("Bag: 2 clips at L=2") and "GFLOPs" in status
        assert src.startswith(f"http://127.0.0.1:{port}/")
        with Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=30).read())) as im:
            assert im.format == "GIF" and im.n_frames == 9 and im.size == (2 * 36 * 3, 36 * 3)
    finally:
        browser.quit()
        app.close()


def test_web_demo_in_headless_chromium(masked_run):
    from PIL import Image

    from elt.apps.serve import serve

    browser = _browser()
    port = free_port()
    app = serve(masked_run, port=port, n=3, block=False)
    try:
        status, src = _generate_in_browser(browser, port, "3")
        assert status.startswith("3: 3 samples at L=4") and "GFLOPs" in status
        assert src.startswith(f"http://127.0.0.1:{port}/")
        image = np.array(Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=30).read())))
        assert image.shape[:2] == (8 * 16, 3 * 8 * 16) and image.std() > 0  # three generated digits, not blank
    finally:
        browser.quit()
        app.close()
