"""A browser softphone for the tests: Debian's headless Chromium, driven by Selenium
through Debian's chromedriver, running JsSIP in testkit/browser/phone.html.

The page is served from loopback. It reaches Kamailio over WSS, trusting the test
server certificate by its public key (``--ignore-certificate-errors-spki-list``: only
that key is accepted without a chain), or over plain WS. "Asleep" is the page gone
(navigated to about:blank): its WebSocket is closed, as when a tab is closed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import shutil
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from testkit.procs import wait_until

PAGE_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def spki_sha256(cert: Path) -> str:
    """base64 SHA-256 of a certificate's SubjectPublicKeyInfo (Chromium's SPKI pin)."""
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PageServer:
    """testkit/browser/ over HTTP on loopback (a secure context for Chromium)."""

    def __init__(self) -> None:
        if not (PAGE_DIR / "build" / "jssip.js").is_file():
            raise RuntimeError(
                f"{PAGE_DIR}/build/jssip.js missing: run scripts/bootstrap.sh (npm ci + build)"
            )
        handler = functools.partial(_Quiet, directory=str(PAGE_DIR))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="page-server", daemon=True
        )
        self._thread.start()

    def url(self, **params: str) -> str:
        return f"http://127.0.0.1:{self.port}/phone.html?{urllib.parse.urlencode(params)}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class PageEvent:
    event: str
    at: float
    """Wall-clock seconds (the page's performance.timeOrigin + now())."""
    detail: str


class Chromium:
    """One headless Chromium (its own profile) with one tab."""

    def __init__(self, logdir: Path, trust_cert: Path | None = None) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="pushgate-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",  # tests run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",  # nothing but loopback
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-ui-for-media-stream",  # answer without a permission prompt
            "--use-fake-device-for-media-stream",  # a synthetic microphone
            f"--user-data-dir={self._profile}",
        ):
            options.add_argument(arg)
        if trust_cert is not None:
            options.add_argument(f"--ignore-certificate-errors-spki-list={spki_sha256(trust_cert)}")
        service = Service(executable_path=CHROMEDRIVER, log_output=str(logdir / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        # The first tab stays blank: pages open in tabs of their own, closed to sleep.
        self._blank = self.driver.current_window_handle

    def open(self, url: str) -> float:
        """Load ``url`` in a new tab; returns the wall-clock time it started."""
        started = time.time()
        self.driver.switch_to.new_window("tab")
        self.driver.get(url)
        return started

    def close_page(self) -> None:
        """The phone goes to sleep: its tab is closed, and with it its WebSocket.
        (Navigating away is not enough: the page may stay alive in the back/forward
        cache with its socket open.)"""
        self.driver.close()
        self.driver.switch_to.window(self._blank)

    def events(self) -> list[PageEvent]:
        raw = self.driver.execute_script("return window.phone ? window.phone.events : []")
        return [PageEvent(e["event"], float(e["at"]) / 1000, str(e["detail"])) for e in raw]

    def value(self, expression: str) -> Any:
        return self.driver.execute_script(f"return {expression}")

    def wait_for(self, event: str, timeout: float = 15.0) -> PageEvent:
        found: list[PageEvent] = []

        def seen() -> bool:
            found[:] = [e for e in self.events() if e.event == event]
            return bool(found)

        try:
            wait_until(seen, timeout, f"page event {event}")
        except TimeoutError:
            raise TimeoutError(
                f"page event {event} not seen in {timeout} s; page saw: {self.events()}"
            ) from None
        return found[0]

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)
