"""webdriver.py: a small W3C WebDriver client over urllib, enough to drive Debian's chromium
through chromium-driver headless in tests (no selenium: a handful of endpoints of the protocol).
"""

import base64
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

CHROMIUM = os.environ.get("TPV_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("TPV_CHROMEDRIVER", "/usr/bin/chromedriver")
# The flags the CI runner needs: no sandbox (containers run as root), no GPU, and nothing that
# reaches the network on its own (updates, sync, safe-browsing lists).
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--window-size=1400,1000"]


class WebDriverError(Exception):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One chromedriver process and one session; close() ends both."""

    def __init__(self, timeout=60.0):
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="tpv-chromium-")
        self.driver = subprocess.Popen([DRIVER, "--port=%d" % self.port],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = "http://127.0.0.1:%d" % self.port
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/status")
                break
            except (OSError, WebDriverError):
                if time.monotonic() > deadline or self.driver.poll() is not None:
                    self.driver.kill()
                    raise WebDriverError("chromedriver did not start")
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM,
                                   "args": CHROME_ARGS + ["--user-data-dir=" + self.profile]},
        }}}
        value = self._call("POST", "/session", caps)
        self.sid = value["sessionId"]

    def _call(self, method, path, body=None, timeout=120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answer = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read() or b"{}")
            v = answer.get("value", {})
            raise WebDriverError("%s %s: %s: %s" % (method, path, v.get("error"),
                                                    v.get("message", "")[:500])) from None
        return answer.get("value")

    def _s(self, method, path, body=None):
        return self._call(method, "/session/%s%s" % (self.sid, path), body)

    def get(self, url):
        self._s("POST", "/url", {"url": url})

    def execute(self, script, *args):
        """Runs script (a function body; arguments in `arguments`) in the page; its return."""
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        v = self._s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(v.values()))

    def send_keys(self, element, text):
        self._s("POST", "/element/%s/value" % element, {"text": text})

    def click(self, element):
        self._s("POST", "/element/%s/click" % element, {})

    def wait_for(self, script, timeout=15.0, poll=0.05, *args):
        """Polls script until it returns something truthy; returns it, or raises."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.execute(script, *args)
            if v:
                return v
            if time.monotonic() > deadline:
                raise WebDriverError("timed out waiting for: " + script[:200])
            time.sleep(poll)

    def screenshot(self, path):
        png = base64.b64decode(self._s("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return path

    def logs(self):
        """The page's console errors, when the driver offers them (goog extension)."""
        try:
            return self._s("POST", "/se/log", {"type": "browser"})
        except WebDriverError:
            return []

    def close(self):
        try:
            self._s("DELETE", "")
        except (OSError, WebDriverError):
            pass
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
