"""The status page in a real headless browser (Debian's chromium through Selenium and the
system chromedriver): it loads without console errors, shows the directive and a frame
thumbnail, and updates by itself. IMG2MUSIC_SCREENSHOT=PATH also saves a screenshot there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.test_live_http import _free_port, _wait_ready

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_status_page_in_a_headless_browser(tiny_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                             str(tiny_bundle), "--no-audio", "--threads", "2", "--duration", "25",
                             "--scene-seconds", "4", "--scene-threshold", "0.02", "--http", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        browser.get(base + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
        wait.until(lambda d: d.find_element(By.ID, "directive").text.strip() != "")
        frame = browser.find_element(By.ID, "frame")
        wait.until(lambda d: "frame.jpg?n=" in frame.get_attribute("src")
                   and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", frame) > 0)
        first = float(browser.find_element(By.ID, "music").text.split()[0])
        wait.until(lambda d: float(d.find_element(By.ID, "music").text.split()[0]) >= first + 2)  # it updates
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log li")) >= 1)  # a scene change logged
        assert browser.find_element(By.ID, "source").text == "streaming"
        assert browser.find_element(By.ID, "transport").text == "playing"
        assert browser.find_element(By.ID, "bundle").text == str(tiny_bundle)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        shot = os.environ.get("IMG2MUSIC_SCREENSHOT")
        assert browser.save_screenshot(shot or str(tmp_path / "page.png"))
    finally:
        proc.kill()
        proc.wait(timeout=30)
