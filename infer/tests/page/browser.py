"""Drives headless Chromium over the DevTools protocol on a pipe (no websocket library needed):
loads the page, uploads an image through its file input, waits for the rendered result and
takes a screenshot.

    browser.py URL IMAGE SCREENSHOT.png

Prints one JSON line: {"state", "top_label", "labels", "model", "timing", "seen"}. Used by
infer/tests/page.rs; by hand, it also makes the README's screenshot from a real photo.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, user_data_dir):
        binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if binary is None:
            raise SystemExit("no chromium on PATH: `cargo xtask setup` installs Debian's chromium where apt-get exists")
        # --remote-debugging-pipe: the protocol on file descriptors 3 (to the browser) and 4
        # (from it), NUL-separated JSON messages.
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # Out of the way of 3 and 4 before the child moves its ends there.
        to_browser_r = fcntl_dup(to_browser_r)
        from_browser_w = fcntl_dup(from_browser_w)

        def wire():
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=900,600",
             f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4), close_fds=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise SystemExit(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise SystemExit(f"{method}: no reply within {timeout} s")

    def read(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise SystemExit("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except SystemExit:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def fcntl_dup(fd):
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def main():
    url, image, screenshot = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(profile)
        try:
            result = run(browser, url, os.path.abspath(image), screenshot)
        finally:
            browser.close()
    print(json.dumps(result))


def run(browser, url, image, screenshot):
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def evaluate(expression):
        reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return reply.get("result", {}).get("value")

    def wait_for(expression, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for {what}; page state {evaluate('document.body && document.body.dataset.state')!r}")

    browser.send("Page.enable", session=session)
    browser.send("Page.navigate", {"url": url}, session)
    wait_for("document.readyState === 'complete' && !!document.getElementById('file')", "the page to load")
    wait_for("document.getElementById('model').querySelector('code') !== null", "the model's details")
    document = browser.send("DOM.getDocument", session=session)
    node = browser.send("DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": "#file"}, session)
    browser.send("DOM.setFileInputFiles", {"files": [image], "nodeId": node["nodeId"]}, session)
    state = wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state",
        "the prediction")
    # The model's view is a data URL image; let it finish decoding before the screenshot.
    wait_for("document.body.dataset.state !== 'done' || document.getElementById('seen').complete",
             "the model's view")
    shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    return {
        "state": state,
        "error": evaluate("document.getElementById('error').textContent"),
        "top_label": evaluate("(document.querySelector('#top li[data-rank=\"1\"] .label') || {}).textContent"),
        "labels": evaluate("[...document.querySelectorAll('#top li')].map(li => [li.querySelector('.label').textContent, li.querySelector('.p').textContent])"),
        "model": evaluate("document.getElementById('model').textContent"),
        "timing": evaluate("document.getElementById('timing').textContent"),
        "seen": evaluate("(() => { const i = document.getElementById('seen'); return [i.naturalWidth, i.naturalHeight]; })()"),
    }


if __name__ == "__main__":
    main()
