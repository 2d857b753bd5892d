"""The inbox page in a real browser (Debian's headless Chromium through Selenium) against a real `herald api`
(two processes) and the real in-app sink: the badge counts, a notification arriving live without a reload
(its text shown as text), mark all read, and the preferences form saving quiet hours that a GET returns.
A screenshot goes to ``$HERALD_HOME/artifacts/inbox.png``."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
import urllib.request
import uuid

import asyncpg
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from api import auth, inbox
from herald.kafka import make_producer
from herald.paths import subdir
from infra import postgres
from schemas.codec import Codec
from schemas.registry import Registry
from tests.conftest import free_port
from tests.integration.harness import Pipeline

pytestmark = pytest.mark.integration

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'


@pytest.fixture
def pipeline(stack, unique, tmp_path):
    postgres.migrate()
    p = Pipeline(unique, tmp_path, free_port()).prepare()
    try:
        p.start("sink")
        p.start("api")
        yield p
    finally:
        p.stop()


@pytest.fixture
def browser():
    assert shutil.which(CHROMIUM) and shutil.which(DRIVER), "apt-get install -y chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def deliver_inapp(pipeline: Pipeline, user: str, title: str, created_at: int | None = None) -> str:
    """A DeliveryRequest on the test's herald.delivery.inapp, for the real sink to insert."""
    settings = pipeline.settings
    topic = settings.topic("delivery.inapp")
    delivery_id = f"{user}-{uuid.uuid4().hex[:8]}"
    value = Codec(Registry(settings.schema_registry_url)).encode(f"{topic}-value", "DeliveryRequest", {
        "delivery_id": delivery_id, "user_id": user, "channel": "INAPP", "kind": "SINGLE",
        "event_ids": [uuid.uuid4().hex], "type": "COMMENT", "priority": "HIGH", "title": title,
        "body": "Someone replied to your task.", "data": {}, "created_at": created_at or int(time.time() * 1000)})
    producer = make_producer(settings.kafka_bootstrap)
    producer.produce(topic, value, user.encode())
    assert producer.flush(10) == 0
    return delivery_id


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_the_inbox_page_is_live_and_saves_preferences(pipeline, browser, unique):
    user = f"{unique}-web"
    port = pipeline.settings.api_port
    token = auth.mint(auth.signing_secret(pipeline.settings), user)
    deliver_inapp(pipeline, user, "Welcome")
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(inbox.url(port, token))
    wait.until(lambda d: text_of(d, "live") == "live")
    wait.until(lambda d: text_of(d, "unread") == "1" and len(d.find_elements(By.CSS_SELECTOR, "#list li.item")) == 1)
    assert "token=" not in browser.current_url  # moved out of the address bar

    deliver_inapp(pipeline, user, HOSTILE)  # through the sink; the page is not reloaded
    wait.until(lambda d: text_of(d, "unread") == "2" and text_of(d, "unseen") == "2")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#list li.item")) == 2)
    newest = browser.find_element(By.CSS_SELECTOR, "#list li.item .title")
    assert newest.text == HOSTILE  # shown as text
    assert not browser.find_elements(By.CSS_SELECTOR, "#list img") and browser.title != "pwned"

    browser.find_element(By.ID, "read-all").click()
    wait.until(lambda d: text_of(d, "unread") == "0")  # the badge may hear it from the socket first
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#list li.item.unread"))

    wait.until(lambda d: d.find_element(By.ID, "timezone").get_attribute("value") == "UTC")
    quiet = browser.find_element(By.ID, "quiet-on")
    if not quiet.is_selected():
        quiet.click()
    for element_id, value in (("quiet-start", "22:30"), ("quiet-end", "06:45"), ("timezone", "Europe/Paris")):
        field = browser.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "channels-SMS").click()  # off
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: text_of(d, "saved").startswith("Saved"))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/users/{user}/preferences",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        prefs = json.loads(r.read())
    assert prefs["quiet_hours"] == {"start": "22:30", "end": "06:45"} and prefs["timezone"] == "Europe/Paris"
    assert prefs["channels"]["SMS"] is False and prefs["channels"]["EMAIL"] is True

    deliver_inapp(pipeline, user, "Your milestone is due tomorrow")  # one unread for the picture
    wait.until(lambda d: text_of(d, "unread") == "1")
    browser.execute_script("window.scrollTo(0, 0)")
    shot = subdir("artifacts") / "inbox.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_list_catches_up_with_what_came_while_the_socket_was_away(pipeline, browser, unique):
    """A row inserted while the page has no registered socket is pushed to nobody: the page must read the
    list again on connect, not only the counts (which the first frame of each connect carries). When more
    came than a page holds, "More" must page on through them, not past them from where the old list ended."""
    user = f"{unique}-away"
    token = auth.mint(auth.signing_secret(pipeline.settings), user)
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    now = int(time.time() * 1000)
    wait_inserted(deliver_inapp(pipeline, user, "Before", created_at=now))
    browser.get(inbox.url(pipeline.settings.api_port, token))
    wait.until(lambda d: text_of(d, "live") == "live" and titles(d) == ["Before"])
    pipeline.kill("api", signal.SIGTERM)
    wait.until(lambda d: text_of(d, "live") == "offline")
    missed = [deliver_inapp(pipeline, user, f"Missed {i}", created_at=now + i) for i in range(1, 22)]
    for delivery_id in missed:
        wait_inserted(delivery_id)
    pipeline.start("api")
    newest = [f"Missed {i}" for i in range(21, 1, -1)]  # a page: 20 of the 21
    wait.until(lambda d: text_of(d, "live") == "live" and text_of(d, "unread") == "22" and titles(d) == newest)
    browser.find_element(By.ID, "more").click()
    wait.until(lambda d: titles(d) == [*newest, "Missed 1", "Before"])

    # fewer than a page while away: the newest page shares rows with the list, and what it lacks goes on top
    pipeline.kill("api", signal.SIGTERM)
    wait.until(lambda d: text_of(d, "live") == "offline")
    wait_inserted(deliver_inapp(pipeline, user, "Missed 22", created_at=now + 22))
    pipeline.start("api")
    wait.until(lambda d: text_of(d, "live") == "live" and text_of(d, "unread") == "23")
    wait.until(lambda d: titles(d) == ["Missed 22", *newest, "Missed 1", "Before"])


def titles(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#list li.item .title")]


async def inserted(delivery_id: str) -> bool:
    conn = await asyncpg.connect(postgres.database_url())
    try:
        return await conn.fetchval("SELECT count(*) FROM notifications WHERE notification_id = $1", delivery_id) == 1
    finally:
        await conn.close()


def wait_inserted(delivery_id: str, timeout: float = 60) -> None:
    """Until the sink has written the row of ``delivery_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(inserted(delivery_id)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{delivery_id} not in notifications after {timeout}s")
