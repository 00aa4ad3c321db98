"""Open a page in headless Chromium and look at it, through the DevTools protocol over a pipe.

``--remote-debugging-pipe`` speaks the protocol on file descriptors 3 (commands in) and 4
(replies and events out), one NUL-terminated JSON message each: no WebSocket client, no
driver, nothing from PyPI. :func:`chromium` says why the browser cannot be used where it is not
installed (``make install`` installs Debian's ``chromium`` when run as root).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> tuple[str | None, str]:
    """The browser's path, or None and why not."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path, ""
    how = ("run `make install` as root (it installs Debian's chromium)" if os.geteuid() == 0 else
           "install Debian's chromium (`sudo apt-get install chromium`, or `make install` as root)")
    return None, f"headless Chromium is not installed: {how}"


@dataclass
class PageCheck:
    """What a page showed: its images, console and network, a screenshot, values read by scripts."""

    images: list[dict] = field(default_factory=list)  # {"src", "naturalWidth", "complete"}
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    screenshot: np.ndarray | None = None  # (H, W, 3) uint8
    values: dict = field(default_factory=dict)  # name -> what its expression returned
    overflow: int = 0  # page width beyond the viewport, in CSS pixels (> 0: scrolls sideways)


class _Pipe:
    def __init__(self, binary: str, profile: str):
        theirs_in, self.ours_in = os.pipe()  # we write commands, the browser reads fd 3
        self.ours_out, theirs_out = os.pipe()  # the browser writes fd 4, we read

        def _fds():  # in the child: the pipe ends where the browser looks for them (kept by pass_fds)
            high_in, high_out = os.dup(theirs_in), os.dup(theirs_out)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(theirs_in)
        os.close(theirs_out)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer")
            chunk = os.read(self.ours_out, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.ours_in, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.ours_in)
        os.close(self.ours_out)


def open_page(path: Path, expressions: dict[str, str] | None = None, *, width: int = 1280, height: int = 900,
              mobile: bool = False) -> PageCheck:
    """Load ``path`` (a file) at the given viewport, and report what :class:`PageCheck` holds.

    Args:
        expressions: name -> a JavaScript expression evaluated once the page has loaded (JSON-able result).
    """
    binary, why = chromium()
    if binary is None:
        raise RuntimeError(why)
    from PIL import Image

    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(binary, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": mobile}, session)
            pipe.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session)
            pipe.wait_for("Page.loadEventFired")
            check = PageCheck()

            def evaluate(expression: str):
                result = pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
                return result["result"].get("value")

            check.images = evaluate("Array.from(document.images).map(i => ({src: i.src.slice(0, 40), "
                                    "naturalWidth: i.naturalWidth, complete: i.complete}))")
            check.overflow = evaluate("document.documentElement.scrollWidth - window.innerWidth")
            check.values = {name: evaluate(e) for name, e in (expressions or {}).items()}
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
            check.screenshot = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB"))
            pipe.send("Runtime.evaluate", {"expression": "1"}, session)  # flush the events sent so far
            for event in pipe.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    check.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
                elif method == "Runtime.exceptionThrown":
                    check.errors.append(params["exceptionDetails"].get("text", "exception"))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    check.errors.append(params["entry"].get("text", "error"))
                elif method == "Network.loadingFailed":
                    check.errors.append(f"failed to load: {params.get('errorText')}")
                elif method == "Network.requestWillBeSent":
                    check.requests.append(params["request"]["url"][:80])
            return check
        finally:
            pipe.close()
