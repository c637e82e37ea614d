"""
The browser console (mailframe/web/static) in Debian's chromium, headless,
driven by selenium, against a real C{twistd -n mailframe} on loopback
ports: captured mail appearing without a reload, a message's HTML in a
sandboxed frame where no script runs, the login form, the queue's hold and
release, the live sessions and decisions.

With MAILFRAME_SCREENSHOTS=DIR set, the tests also save the screenshots of
the documentation (console-*.png) in DIR.

Blocking (selenium, smtplib): L{SynchronousTestCase}; every wait has a
deadline.  Without chromium, chromedriver or selenium the tests are
skipped, or fail under MAILFRAME_REQUIRE_INTEROP=1.

Owns: nothing of mailframe.
"""

from __future__ import annotations

import os
import smtplib
import socket
import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._mailpeers import HOST, TWISTD, Twistd, freePort, listening, unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0
"""Seconds a page may take to show what a test waits for."""
SOCKET_TIMEOUT = 10.0
SCREENSHOTS = os.environ.get("MAILFRAME_SCREENSHOTS")
USER, PASSWORD = "admin", "console-test-password"

T = TypeVar("T")

ATTACK = """<html><body>
<p id="greeting">Hello from an attacker</p>
<img src=x onerror="document.body.dataset.ran='img';parent.pwned=2">
<a id="js" href="javascript:parent.pwned=3">click me</a>
<svg onload="document.body.dataset.ran='svg';parent.pwned=4"><circle r="4"/></svg>
<iframe srcdoc="<script>parent.parent.pwned=5</script>"></iframe>
<form action="javascript:parent.pwned=6"><button id="go">go</button></form>
<script>document.body.dataset.ran='script';parent.document.title='pwned';window.top.pwned=1</script>
</body></html>
"""


def _webdriver() -> Any:
    """A headless chromium (Debian's), or SkipTest (a failure under MAILFRAME_REQUIRE_INTEROP)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise unavailable("selenium is not installed (pip install selenium)") from None
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            raise unavailable(f"no {program} (apt-get install chromium chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # never let selenium-manager download a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def _message(subject: str, text: str, html: str | None, sender: str, to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


class ConsoleTestCase(SynchronousTestCase):
    """A browser, and servers started by the test, stopped in its cleanups."""

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise unavailable(f"no twistd next to {TWISTD.parent}")
        self.driver = _webdriver()
        self.addCleanup(self.driver.quit)

    # -- the server ------------------------------------------------------------

    def startServer(self, *args: str) -> tuple[int, str, Twistd]:
        """C{twistd -n mailframe} with C{args}: its SMTP port, the console's URL, the process."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        smtpPort, webPort = freePort(), freePort()
        server = Twistd(
            directory,
            "--listen", f"tcp:{smtpPort}:interface={HOST}",
            "--web", f"tcp:{webPort}:interface={HOST}",
            "--hostname", "mx.console.test",
            "--greet-delay", "0",
            *args,
        )  # fmt: skip
        self.addCleanup(server.stop)
        server.start(lambda: listening(smtpPort) and listening(webPort))
        self.server = server
        return smtpPort, f"http://{HOST}:{webPort}", server

    def send(self, port: int, message: EmailMessage, sender: str, recipients: list[str]) -> None:
        with smtplib.SMTP(HOST, port, timeout=SOCKET_TIMEOUT) as client:
            client.send_message(message, sender, recipients)

    # -- the browser -----------------------------------------------------------

    def waitUntil(self, condition: Callable[[Any], T], what: str, timeout: float = WAIT) -> T:
        """What C{condition(driver)} returns once it is true, at most C{timeout} seconds."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)
        except TimeoutException:
            log = self.server.text()[-3000:] if getattr(self, "server", None) else ""
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}\n"
                f"browser log: {self.browserLog()}\ntwistd log:\n{log}"
            ) from None

    def byID(self, ident: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, ident)

    def visible(self, ident: str) -> Any:
        """The element with id C{ident}, once it is displayed."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.waitUntil(ec.visibility_of_element_located((By.ID, ident)), f"#{ident}")

    def rows(self, testid: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'))

    def rowContaining(self, testid: str, text: str) -> Callable[[Any], Any]:
        """A condition: the first row C{[data-testid=testid]} whose text has C{text}."""
        from selenium.common.exceptions import StaleElementReferenceException

        def find(driver: Any) -> Any:
            try:
                for row in self.rows(testid):
                    if text in row.text:
                        return row
            except StaleElementReferenceException:  # the list was redrawn meanwhile
                pass
            return False

        return find

    def browserLog(self) -> list[str]:
        try:
            return [str(e.get("message")) for e in self.driver.get_log("browser")]
        except Exception:
            return []

    def assertKeepsItsCSP(self) -> None:
        """The console's page and files broke no rule of their Content-Security-Policy."""
        own = [
            line
            for line in self.browserLog()
            if "Content Security Policy" in line and "/api/v1/" not in line
        ]
        self.assertEqual(own, [], "the console breaks its own CSP")

    def confirm(self) -> None:
        """Answer the page's confirmation dialog with its OK button."""
        self.visible("confirm")
        self.byID("confirm-ok").click()
        self.waitUntil(lambda d: not self.byID("confirm").is_displayed(), "the dialog to close")

    def screenshot(self, name: str) -> None:
        """docs/_static/console-NAME.png, when MAILFRAME_SCREENSHOTS=DIR is set."""
        if not SCREENSHOTS:
            return
        directory = Path(SCREENSHOTS)
        directory.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)  # let a redraw or a frame finish painting
        self.driver.save_screenshot(str(directory / f"console-{name}.png"))

    def openConsole(self, url: str, page: str = "") -> None:
        self.driver.get(f"{url}/{'#' + page if page else ''}")
        self.waitUntil(lambda d: self.byID("tabs").is_displayed(), "the console's tabs")


class CaptureConsoleTests(ConsoleTestCase):
    """The Mail page of capture mode."""

    def test_messageAppearsLive(self) -> None:
        """A message sent while the console is open is listed without a reload; its HTML is in a sandboxed frame."""
        port, url, _ = self.startServer("--capture")
        self.openConsole(url)
        self.visible("page-mail")
        self.assertFalse(self.byID("tab-queue").is_displayed(), "no queue in capture mode")
        self.assertEqual(self.byID("hostname").text, "mx.console.test")
        self.driver.execute_script("window.sameDocument = 'yes'")

        examples = [
            ("Your invoice #2291", "billing@shop.example", "dana@customer.example"),
            ("Password reset requested", "no-reply@auth.example", "sam@team.example"),
            ("Weekly digest: 12 new comments", "digest@forum.example", "lee@customer.example"),
        ]
        for subject, sender, to in examples:
            text = f"{subject}\n\nHello,\n\nthis is a test message.\n"
            html = f"<h1>{subject}</h1><p>Hello,</p><p>this is a <b>test</b> message.</p>"
            self.send(port, _message(subject, text, html, sender, to), sender, [to])
        token = uuid.uuid4().hex[:8]
        subject = f"Welcome aboard {token}"
        html = (
            f"<html><body><h1>Welcome aboard</h1><p>Hi Alex, your account "
            f"<b>{token}</b> is ready.</p><p><a href='https://app.example/start'>Get "
            "started</a></p></body></html>"
        )
        message = _message(subject, f"Hi Alex,\n\nyour account {token} is ready.\n", html,
                           "welcome@app.example", "alex@customer.example")  # fmt: skip
        self.send(port, message, "welcome@app.example", ["alex@customer.example"])

        row = self.waitUntil(self.rowContaining("mail-row", token), "the new message in the list")
        self.assertEqual(self.driver.execute_script("return window.sameDocument"), "yes")
        self.assertEqual(len(self.rows("mail-row")), 4)
        self.assertIn("welcome@app.example", row.text)
        self.screenshot("mail")

        row.click()
        self.waitUntil(
            lambda d: token in self.byID("message-subject").text, "the message's subject"
        )
        self.waitUntil(lambda d: token in self.byID("message-text").text, "the text part")
        self.byID("message-tab-html").click()
        frame = self.visible("message-html")
        self.assertEqual(frame.get_attribute("sandbox"), "")
        self.assertNotIn("allow-scripts", frame.get_attribute("sandbox") or "")
        self.assertTrue(frame.get_attribute("src").endswith("/html"))
        self.driver.switch_to.frame(frame)
        try:
            self.waitUntil(lambda d: token in d.find_element("tag name", "body").text, "the HTML")
        finally:
            self.driver.switch_to.default_content()
        self.screenshot("message")

        self.byID("message-tab-headers").click()
        self.waitUntil(lambda d: "Subject" in self.byID("message-headers").text, "the headers")
        self.byID("message-tab-raw").click()
        self.waitUntil(lambda d: f"Subject: {subject}" in self.byID("message-raw").text, "raw")

        def count(n: int) -> Callable[[Any], bool]:
            return lambda d: len(self.rows("mail-row")) == n

        self.byID("mail-search").send_keys("subject:digest")
        # one row, the digest (found with the stale-safe rowContaining: the
        # list may be redrawn between finding a row and reading its text)
        digest = self.rowContaining("mail-row", "Weekly digest")
        self.waitUntil(lambda d: count(1)(d) and digest(d), "the one message matching the search")
        self.byID("mail-search").clear()
        self.byID("mail-search").send_keys(" ")  # an input event: the search is empty again
        self.waitUntil(count(4), "every message again")
        from selenium.webdriver.support.ui import Select

        Select(self.byID("mail-mailbox")).select_by_value("team.example")
        self.waitUntil(count(1), "the one message of mailbox team.example")
        Select(self.byID("mail-mailbox")).select_by_value("")
        self.waitUntil(count(4), "every mailbox again")

        self.byID("message-delete").click()  # the open message, after a confirmation
        self.byID("confirm-cancel").click()
        time.sleep(0.5)
        self.assertEqual(len(self.rows("mail-row")), 4)
        self.byID("message-delete").click()
        self.confirm()
        self.waitUntil(count(3), "the deleted message to leave the list")
        self.assertFalse(self.rowContaining("mail-row", token)(self.driver))
        self.assertKeepsItsCSP()

    def test_scriptsDoNotRun(self) -> None:
        """No script of a message's HTML runs, in the console's frame or at its /html URL."""
        port, url, _ = self.startServer("--capture")
        self.openConsole(url)
        title = self.driver.title
        token = uuid.uuid4().hex[:8]
        message = _message(f"Attack {token}", "plain text", ATTACK, "evil@attacker.example",
                           "victim@example.org")  # fmt: skip
        self.send(port, message, "evil@attacker.example", ["victim@example.org"])
        self.waitUntil(self.rowContaining("mail-row", token), "the message in the list").click()
        self.waitUntil(lambda d: token in self.byID("message-subject").text, "the message")
        self.byID("message-tab-html").click()
        frame = self.visible("message-html")
        self.assertEqual(frame.get_attribute("sandbox"), "")
        self.driver.switch_to.frame(frame)
        try:
            self.waitUntil(lambda d: "attacker" in d.find_element("tag name", "body").text, "HTML")
            time.sleep(1.0)  # what a script or a handler would have done, it has done by now
            ran = self.driver.execute_script("return document.body.dataset.ran || null")
            self.assertIsNone(ran, "a script of the message ran in the console's frame")
        finally:
            self.driver.switch_to.default_content()
        self.assertIsNone(self.driver.execute_script("return window.pwned"))
        self.assertEqual(self.driver.title, title)
        self.assertNotEqual(self.driver.title, "pwned")

        ident = self.rows("mail-row")[0].get_attribute("data-id")
        self.driver.switch_to.new_window("tab")
        self.driver.get(f"{url}/api/v1/messages/{ident}/html")
        self.waitUntil(lambda d: "attacker" in d.find_element("tag name", "body").text, "the page")
        time.sleep(0.5)
        ran = self.driver.execute_script("return document.body.dataset.ran || null")
        self.assertIsNone(ran, "a script of the message ran at its /html URL")
        scripts = self.driver.execute_script("return document.scripts.length")
        handlers = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('*')).filter("
            "e => Array.from(e.attributes).some(a => /^on/i.test(a.name)"
            " || /^\\s*javascript:/i.test(a.value))).length"
        )
        self.assertEqual((scripts, handlers), (0, 0), "the sanitised HTML keeps scripts")
        self.assertIsNone(self.driver.execute_script("return window.pwned"))


class SessionsAndDecisionsTests(ConsoleTestCase):
    """The Sessions and Decisions pages, live."""

    def test_openSession(self) -> None:
        """An open SMTP session is listed with its client address and HELO, and leaves the list when it ends."""
        port, url, _ = self.startServer("--capture")
        self.openConsole(url, "sessions")
        self.visible("page-sessions")
        client = smtplib.SMTP(HOST, port, timeout=SOCKET_TIMEOUT)
        self.addCleanup(client.close)
        client.ehlo("client.console.test")
        assert client.sock is not None
        clientPort = client.sock.getsockname()[1]
        row = self.waitUntil(
            self.rowContaining("session-row", f"{HOST}:{clientPort}"), "the session in the list"
        )
        self.assertIn("client.console.test", row.text)
        self.screenshot("sessions")
        client.quit()
        self.waitUntil(
            lambda d: not self.rowContaining("session-row", f"{HOST}:{clientPort}")(d),
            "the ended session to leave the list",
        )
        self.assertKeepsItsCSP()

    def test_decisionsLive(self) -> None:
        """A message accepted while the Decisions page is open is shown there without a reload."""
        port, url, _ = self.startServer("--capture")
        self.openConsole(url, "decisions")
        self.visible("page-decisions")
        self.waitUntil(
            lambda d: self.byID("decisions-empty").is_displayed() or self.rows("decision-row"),
            "the first page of decisions",
        )
        time.sleep(0.5)  # the page is now waiting for news (a long poll)
        recipient = f"d{uuid.uuid4().hex[:8]}@customer.example"
        self.send(port, _message("hello", "hi", None, "app@dev.example", recipient),
                  "app@dev.example", [recipient])  # fmt: skip
        self.waitUntil(self.rowContaining("decision-row", recipient), "the decision in the list")
        self.screenshot("decisions")
        self.byID("decisions-code").send_keys("5")  # refusals only: none in capture mode
        self.byID("decisions-code").submit()
        self.waitUntil(lambda d: self.byID("decisions-empty").is_displayed(), "no refusal")
        self.byID("decisions-code").clear()
        self.byID("decisions-address").send_keys(recipient)
        self.byID("decisions-address").submit()
        self.waitUntil(self.rowContaining("decision-row", recipient), "the filtered decision")
        self.assertTrue(all(recipient in row.text for row in self.rows("decision-row")))
        self.assertKeepsItsCSP()


class LoginAndQueueTests(ConsoleTestCase):
    """The login form, and the Queue page's hold and release."""

    def test_loginAndHold(self) -> None:
        """After a wrong password and a login, a deferred message is held and released from the Queue page."""
        from mailframe.auth.passwords import makeEntry, updatePasswordFile

        passwords = Path(self.mktemp()).resolve()
        passwords.parent.mkdir(parents=True, exist_ok=True)
        updatePasswordFile(
            str(passwords), USER, makeEntry(USER, PASSWORD, None)
        )  # mailframe-passwd
        # nothing listens there, so the message stays deferred: the port is
        # held bound (not listening: a connection is refused) for the whole
        # test, or freePort() could hand it out again, to this very server,
        # which would then relay the message to itself in a loop
        dead = socket.socket()
        self.addCleanup(dead.close)
        dead.bind((HOST, 0))
        deadPort = dead.getsockname()[1]
        port, url, _ = self.startServer(
            "--web-auth", f"mailframe:{passwords}",
            "--spool", "spool",
            "--relay-host", f"[{HOST}]:{deadPort}",
            "--relay-network", "127.0.0.0/8",
            "--domain", "console.test",
        )  # fmt: skip
        token = uuid.uuid4().hex[:8]
        recipient = f"q{token}@remote.example"
        self.send(port, _message(f"Queued {token}", "hi", None, "app@dev.example", recipient),
                  "app@dev.example", [recipient])  # fmt: skip

        self.driver.get(f"{url}/")
        self.visible("login-form")
        self.assertFalse(self.byID("tabs").is_displayed())
        self.byID("login-username").send_keys(USER)
        self.byID("login-password").send_keys("wrong password")
        self.byID("login-submit").click()
        error = self.visible("login-error")
        self.assertTrue(error.text)
        self.assertFalse(self.byID("tabs").is_displayed())

        self.byID("login-password").clear()
        self.byID("login-password").send_keys(PASSWORD)
        self.byID("login-submit").click()
        self.waitUntil(lambda d: self.byID("tabs").is_displayed(), "the console after login")
        self.assertEqual(self.byID("user").text, USER)
        self.assertFalse(self.byID("tab-mail").is_displayed(), "no Mail page without capture")
        self.byID("tab-queue").click()
        self.visible("page-queue")
        row = self.waitUntil(self.rowContaining("queue-row", recipient), "the queued message")
        ident = row.get_attribute("data-id")
        self.assertEqual(row.get_attribute("data-held"), "false")
        self.waitUntil(
            lambda d: "remote.example" in self.byID("queue-destinations").text, "domains"
        )
        self.screenshot("queue")

        def queueRow(driver: Any) -> Any:
            return self.rowContaining("queue-row", recipient)(driver)

        def held(value: str) -> Callable[[Any], bool]:
            def check(driver: Any) -> bool:
                found = queueRow(driver)
                try:
                    return bool(found) and found.get_attribute("data-held") == value
                except Exception:  # redrawn meanwhile
                    return False

            return check

        from selenium.webdriver.common.by import By

        queueRow(self.driver).find_element(By.CSS_SELECTOR, '[data-testid="queue-hold"]').click()
        self.assertIn(ident, self.visible("confirm-text").text)
        self.confirm()
        self.waitUntil(held("true"), "the message to be held")
        self.assertIn("held", queueRow(self.driver).text)

        queueRow(self.driver).find_element(
            By.CSS_SELECTOR, '[data-testid="queue-release"]'
        ).click()
        self.byID("confirm-cancel").click()  # a cancelled confirmation changes nothing
        time.sleep(0.5)
        self.assertEqual(queueRow(self.driver).get_attribute("data-held"), "true")
        queueRow(self.driver).find_element(
            By.CSS_SELECTOR, '[data-testid="queue-release"]'
        ).click()
        self.confirm()
        self.waitUntil(held("false"), "the message to be released")

        queueRow(self.driver).click()  # its envelope, attempts and replies
        detail = self.visible("queue-detail")
        self.waitUntil(lambda d: recipient in detail.text and ident in detail.text, "the details")
        self.screenshot("queue-message")

        self.byID("tab-settings").click()
        self.waitUntil(self.rowContaining("setting-row", "relay-host"), "the settings")
        self.screenshot("settings")

        self.byID("tab-stats").click()
        self.visible("page-stats")
        self.waitUntil(lambda d: self.rows("stat-accepted"), "the counters")
        self.waitUntil(lambda d: self.rows("chart-connections"), "the charts")
        if SCREENSHOTS:  # a chart with a line needs two samples (one every 10 s)
            for n in range(3):
                other = f"r{n}@remote{n}.example"
                self.send(port, _message(f"More {n}", "hi", None, "app@dev.example", other),
                          "app@dev.example", [other])  # fmt: skip
            self.waitUntil(
                lambda d: d.find_elements(
                    "css selector", '[data-testid="chart-connections"] .line'
                ),
                "two samples",
                timeout=40,
            )
        self.screenshot("stats")
        self.assertKeepsItsCSP()

    def test_loginMemoryChecker(self) -> None:
        """A user of a C{memory:} web-auth checker logs in through the form."""
        _, url, _ = self.startServer("--web-auth", f"memory:{USER}:{PASSWORD}", "--capture")
        self.driver.get(f"{url}/")
        self.visible("login-form")
        self.byID("login-username").send_keys(USER)
        self.byID("login-password").send_keys(PASSWORD)
        self.byID("login-submit").click()
        self.waitUntil(
            lambda d: self.byID("tabs").is_displayed() or self.byID("login-error").is_displayed(),
            "an answer to the login",
        )
        self.assertEqual(self.byID("login-error").text, "")
        self.assertTrue(self.byID("tabs").is_displayed())
        self.assertEqual(self.byID("user").text, USER)
