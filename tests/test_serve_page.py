"""The try-it page of `bertkit serve` in headless Chromium (Debian's ``chromium`` driven by
Playwright): type the API key (the page shows nothing of the model before it), type a text,
click Run, see the label, the probabilities and the latency; a wrong API key shows the error
on the page.

Without chromium (or Playwright) the tests are skipped locally and fail under CI (``$CI``
set), where chromium is installed.
"""

from __future__ import annotations

import os
import shutil

import pytest

from _serve_helpers import ServerProcess, make_folder
from bertkit.modeling.bert import BertForSequenceClassification

KEY = "page-test-key-1234"
CHROMIUM = os.environ.get("BERTKIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install chromium and playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"no chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    folder = make_folder(root / "clf", BertForSequenceClassification, "classification",
                         ["neg", "neutral", "pos"])
    process = ServerProcess(folder, root / "server.log", env={"BERTKIT_API_KEYS": KEY}).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_type_a_text_and_see_the_result(browser, server):
    page = browser.new_page()
    page.goto(server.url + "/")
    assert "API key needed" in page.locator("#meta").inner_text()
    assert page.locator("#route option").count() == 0  # nothing of the model without the key
    page.fill("#key", KEY)
    page.fill("#text", "hello world, the café")
    page.click("#run")  # reads /v1/info with the key, then runs the first route (predict)
    page.wait_for_selector("#label", timeout=15_000)
    assert "task classification" in page.locator("#meta").inner_text()
    assert page.inner_text("#label") in ("neg", "neutral", "pos")
    assert page.locator(".bar").count() == 3  # one probability bar per label
    assert page.inner_text("#status").startswith("200")
    assert float(page.get_attribute("#status", "data-latency-ms")) > 0
    assert '"predictions"' in page.inner_text("#result")

    page.select_option("#route", "embed")
    page.click("#run")
    page.wait_for_function(
        "document.querySelector('#summary').innerText.includes('32-dimensional')", timeout=15_000)

    page.fill("#key", "wrong-key-000000")
    page.click("#run")
    page.wait_for_selector(".error", timeout=15_000)
    assert "unauthorized" in page.inner_text(".error")
    assert page.inner_text("#status").startswith("401")
    page.close()
