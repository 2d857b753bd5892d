"""The status page (/status) in a real browser (Debian's headless Chromium through Selenium), drawn from a
real Prometheus (Debian's, started by ``infra/prometheus.py``) scraping real Herald processes: a worker, the
in-app and email sinks (the email one sending to the local mail catcher) and the API, with the demo
producer's events flowing. The page must show non-zero live rates of
events, decisions and deliveries, every process answering, and redraw by itself. A screenshot goes to
the test's tmp_path, and to ``docs/status-page.png`` (the README shows it) when that
is missing or ``HERALD_UPDATE_SCREENSHOTS=1``, so a test run leaves the work tree as it was."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from api import status
from api.app import create_app
from herald.settings import Settings
from infra import postgres, prometheus
from infra.common import REPO_ROOT
from tests.api.test_inbox_browser import browser  # noqa: F401 - the fixture
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.sinks.helpers import Server

pytestmark = pytest.mark.integration

SCREENSHOT = REPO_ROOT / "docs" / "status-page.png"


async def test_without_prometheus_the_queries_answer_that_it_is_not_reachable(stack, unique):
    await postgres.migrate_async()
    settings = Settings.from_env(topic_prefix=f"{unique}.", prometheus_url=f"http://127.0.0.1:{free_port()}")
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        r = await client.get("/status/queries")
        body = await r.json()
        assert r.status == 200 and body["available"] is False and "not reachable" in body["error"]
        assert [p["name"] for p in body["panels"]] == [q.name for q in status.QUERIES]
        # the browser names nothing: a query string is ignored, never run
        r = await client.get("/status/queries", params={"query": "up"})
        assert [p["name"] for p in (await r.json())["panels"]] == [q.name for q in status.QUERIES]
        page = await client.get("/status")
        assert page.status == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert '<script src="/status.js">' in await page.text()
    finally:
        await client.close()


@pytest.fixture
def monitored(stack, unique, tmp_path, monkeypatch):
    """worker + in-app and email sinks (to a mail catcher) + API with their own state folder, a Prometheus
    scraping them, demo events."""
    postgres.migrate()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HERALD_HOME", str(home))
    p = Pipeline(unique, tmp_path, free_port())
    prom_port = free_port()
    p.env.update(HERALD_HOME=str(home), HERALD_PROMETHEUS_PORT=str(prom_port))
    settings = Settings.from_env(topic_prefix=p.settings.topic_prefix, app_id=p.settings.app_id,
                                 api_port=p.settings.api_port, prometheus_port=prom_port)
    p.prepare()
    producer = email = catcher = None
    try:
        catcher = Server("infra.mailcatcher", tmp_path)
        p.env["HERALD_SMTP_URL"] = f"smtp://127.0.0.1:{catcher.port}"
        p.start("worker")
        p.start("sink")
        p.start("api")
        email_log = tmp_path / "sink-email.log"
        email = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink", "email"], cwd=REPO_ROOT, env=p.env,
                                 stdout=open(email_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while "consuming" not in email_log.read_text(errors="replace"):
            assert email.poll() is None and time.monotonic() < deadline, email_log.read_text()
            time.sleep(0.2)
        prometheus.start(settings, progress=lambda _: None)
        producer = subprocess.Popen([sys.executable, "-m", "streams.cli", "produce", "--demo", "--quiet", "--rate", "40",
                                     "--count", "6000"], cwd=REPO_ROOT, env=p.env, stdout=subprocess.DEVNULL,
                                    stderr=open(tmp_path / "produce.log", "wb"))
        yield p, settings
    finally:
        for proc in (producer, email):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        if catcher is not None:
            catcher.stop()
        prometheus.stop()
        p.stop()


def _panel_total(driver, name: str) -> float:
    return float(driver.find_element(By.ID, name).get_attribute("data-total") or 0)


def test_the_status_page_shows_live_rates_from_prometheus(monitored, browser, tmp_path):  # noqa: F811
    pipeline, settings = monitored
    base = f"http://127.0.0.1:{settings.api_port}"
    browser.get(f"{base}/status")
    wait = WebDriverWait(browser, 120, poll_frequency=1)
    wait.until(lambda d: _panel_total(d, "events") > 0 and _panel_total(d, "decisions") > 0
               and _panel_total(d, "deliveries") > 0)
    assert browser.find_element(By.ID, "problem").get_attribute("hidden") is not None
    shown = browser.find_element(By.CSS_SELECTOR, "#events .big").text  # e.g. "7.11/s"
    assert shown.endswith("/s") and float(shown.removesuffix("/s")) > 0
    # both sinks' rates: each shows once Prometheus has two scrapes of its counter with sends between them
    wait.until(lambda d: all(f"{channel} · SENT" in d.find_element(By.ID, "deliveries").text
                             for channel in ("EMAIL", "INAPP")))
    wait.until(lambda d: "EMAIL" in d.find_element(By.ID, "breakers").text)
    assert "CLOSED" in browser.find_element(By.ID, "breakers").text
    decisions = browser.find_element(By.ID, "decisions").text
    assert any(outcome in decisions for outcome in ("SENT", "BATCHED", "HELD", "DIGESTED", "DEDUPLICATED"))
    # every scraped process answers: the worker and the sink from the targets file, the API by its port
    wait.until(lambda d: {"worker", "sink-inapp", "sink-email", "api"} <= {
        row.text.split()[0] for row in d.find_elements(By.CSS_SELECTOR, "#processes tr") if row.text.endswith("up")})
    # the page redraws by itself, and the history has points
    first = browser.find_element(By.TAG_NAME, "body").get_attribute("data-updated")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-updated") != first)
    wait.until(lambda d: int(d.find_element(By.ID, "history").get_attribute("data-points") or 0) >= 2)
    # what the page showed is what Prometheus answers for the same named query
    with urllib.request.urlopen(f"{base}/status/queries", timeout=10) as r:
        body = json.loads(r.read())
    assert body["available"] and body["prometheus"] == prometheus.url(settings)
    panel = {p["name"]: p for p in body["panels"]}
    assert panel["events"]["series"][0]["value"] > 0
    assert all("user" not in k for p in body["panels"] for s in p["series"] for k in s["labels"])
    browser.set_window_size(1280, 960)  # the page without the empty space below it
    shot = tmp_path / "status-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if not SCREENSHOT.exists() or os.environ.get("HERALD_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, SCREENSHOT)
