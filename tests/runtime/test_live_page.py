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


ATTACK = """<!doctype html><title>attack</title>
<form id="form" method="POST" action="{base}/control" enctype="text/plain">
<input name='{{"prompt": "evil", "x": "' value='"}}'></form>
<script>
const tries = [];
tries.push(fetch("{base}/control", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                     body: '{{"transport": "pause"}}'}}).then(() => "no-cors sent", e => "no-cors " + e));
tries.push(fetch("{base}/control", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                     body: '{{"transport": "pause"}}'}}).then(r => "json " + r.status, e => "json " + e));
tries.push(new Promise(done => {{
  const ws = new WebSocket("{ws}/");
  ws.onopen = () => {{ ws.send('{{"temperature": 2.5}}'); done("ws open"); }};
  ws.onerror = () => done("ws refused");
}}));
Promise.all(tries).then(results => {{
  document.title = "tried: " + results.join("; ");
  setTimeout(() => document.getElementById("form").submit(), 300);  // last: it leaves the page
}});
</script>"""


def test_a_page_of_another_origin_cannot_steer_the_music(tiny_bundle, browser, tmp_path):
    """A page served from another local origin tries what a browser lets any page try: a
    no-cors fetch, a JSON fetch (preflighted), a WebSocket and an auto-submitted text/plain form
    (all seen to work before the control surface checked Origin, Host and Content-Type)."""
    import http.server
    import json
    import threading
    import time
    import urllib.request

    from selenium.webdriver.support.ui import WebDriverWait

    port, ws_port, evil_port = _free_port(), _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "live.py"), "--synthetic", "--engines",
                             str(tiny_bundle), "--no-audio", "--threads", "2", "--duration", "25",
                             "--http", str(port), "--ws", str(ws_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    page = ATTACK.format(base=base, ws=f"ws://127.0.0.1:{ws_port}").encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", evil_port), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        _wait_ready(base)
        browser.get(f"http://127.0.0.1:{evil_port}/")
        WebDriverWait(browser, 20).until(lambda d: d.title.startswith("tried:") or "control" in d.current_url)
        time.sleep(1.5)  # the form's post and anything queued reach the compute thread
        with urllib.request.urlopen(base + "/control", timeout=5) as r:
            settings = json.loads(r.read())
        assert settings["changes"] == {} and settings["transport"] == "playing", settings
        assert settings["prompt"] is None and settings["sampling"]["temperature"] == 1.0
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        refused = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("img2music_requests_refused_total")}
        assert refused.get("content_type", 0) >= 1, refused  # the no-cors fetch and the form
    finally:
        evil.shutdown()
        proc.kill()
        proc.wait(timeout=30)
