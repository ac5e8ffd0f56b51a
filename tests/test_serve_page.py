"""The try-it page of `bertkit serve` in headless Chromium (Debian's ``chromium`` driven by
Playwright): type the API key (the page shows nothing of the model before it), type a text,
click Run, see the label, the probabilities and the latency; a wrong API key shows the error
on the page. Click Explain and the words of the text are coloured by their attributions (red
for, blue against) with the scores the library computes; the screenshot of that page is
docs/serve-explain.png (rewritten when $BERTKIT_UPDATE_SCREENSHOTS is set). With a search
index (--index) the page shows a search box: type a query, press Enter, see the documents
`SearchIndex.search` finds, with their scores.

Without chromium (or Playwright) the tests are skipped locally and fail under CI (``$CI``
set), where chromium is installed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from _serve_helpers import REPO, ServerProcess, make_folder
from bertkit.explain import explain
from bertkit.modeling.bert import BertForSequenceClassification

KEY = "page-test-key-1234"
# The browser: $BERTKIT_CHROMIUM, else `chromium` on the PATH (Debian's package), as .ci/run looks.
CHROMIUM = (os.environ.get("BERTKIT_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser") or "/usr/bin/chromium")
INSTALL = ("install it with `sudo apt-get install chromium` (Debian/Ubuntu), or point "
           "$BERTKIT_CHROMIUM at a Chrome/Chromium binary")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install chromium and playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"the browser test needs Chromium, and there is none at {CHROMIUM}: {INSTALL}")
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
    # initializer_range 0.2: attributions of a visible size (at 0.02 a tiny model is ~linear)
    folder = make_folder(root / "clf", BertForSequenceClassification, "classification",
                         ["neg", "neutral", "pos"], initializer_range=0.2)
    process = ServerProcess(folder, root / "server.log", env={"BERTKIT_API_KEYS": KEY}).start()
    process.folder = folder
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


RED, BLUE = "rgba(220, 38, 38", "rgba(37, 99, 235"


def test_explain_colours_the_words_by_their_attributions(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 720, "height": 560})
    page.goto(server.url + "/")
    page.fill("#key", KEY)
    text = "the film was great, but the café was cold"
    page.fill("#text", text)
    page.select_option("#method", "occlusion")
    page.click("#explain")  # reads /v1/info with the key, then posts /v1/explain
    page.wait_for_selector(".attr", timeout=30_000)
    assert page.inner_text("#status").startswith("200")
    spans = page.eval_on_selector_all(".attr", "els => els.map(e => [e.textContent, "
                                      "e.style.backgroundColor, Number(e.dataset.score)])")
    want = explain(server.folder, text, method="occlusion", device="cpu")
    assert [w for w, _, _ in spans] == [w.text for w in want.words] == text.replace(
        ",", " ,").split()
    scores = [score for _, _, score in spans]
    assert scores == pytest.approx(want.attributions[0].words, abs=1e-5)
    for word, colour, score in spans:
        assert colour.startswith(RED if score >= 0 else BLUE), (word, colour, score)
    alphas = [float(colour.rsplit(",", 1)[1].rstrip(")")) for _, colour, _ in spans]
    strongest = max(range(len(scores)), key=lambda i: abs(scores[i]))
    assert alphas[strongest] == max(alphas) and min(alphas) < max(alphas)
    # the page shows the text itself, coloured: nothing dropped or added between the words
    assert page.inner_text(".attr-text") == text
    assert page.inner_text("#label") == want.prediction["label"]
    assert json.loads(page.inner_text("#result"))["method"] == "occlusion"

    page.select_option("#method", "ig")
    page.click("#explain")
    page.wait_for_function("document.querySelector('.legend').innerText.includes('ig:')",
                           timeout=30_000)
    shot = tmp_path / "serve-explain.png"
    box = page.locator("#summary").bounding_box()  # the page down to the coloured words
    page.screenshot(path=str(shot), full_page=True, clip={"x": 0, "y": 0, "width": 720,
                                          "height": box["y"] + box["height"] + 16})
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000
    if os.environ.get("BERTKIT_UPDATE_SCREENSHOTS"):
        shutil.copyfile(shot, os.path.join(REPO, "docs", "serve-explain.png"))
    page.close()


@pytest.fixture(scope="module")
def search_server(tmp_path_factory):
    """A server of a classifier with a search index beside it (no keys: the page shows the
    search box at once)."""
    from bertkit.modeling.bert import BertModel
    from bertkit.search import build_index
    root = tmp_path_factory.mktemp("page-search")
    encoder = make_folder(root / "enc", BertModel)
    corpus = root / "docs.txt"
    corpus.write_text("".join(f"{w} world, the café {i}\n" for i, w in
                              enumerate(["hello", "naive", "Straße", "cafe", "The", "un"])),
                      encoding="utf-8")
    build_index(encoder, str(corpus), str(root / "index"), progress=False)
    clf = make_folder(root / "clf", BertForSequenceClassification, "classification", ["a", "b"])
    process = ServerProcess.from_config(root / "server.log", model=clf, index=str(root / "index"))
    process.index = str(root / "index")
    process.start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_search_box_lists_the_nearest_documents(browser, search_server):
    from bertkit.search import SearchIndex
    page = browser.new_page()
    page.goto(search_server.url + "/")
    assert page.is_visible("#search-box") and "6 documents, flat" in page.inner_text("#index-meta")
    assert "/v1/search" not in page.locator("#route").inner_text()  # its own box, not a route
    page.fill("#query", "naive world")
    page.fill("#top-k", "3")
    page.press("#query", "Enter")
    page.wait_for_selector("ol.hits li", timeout=15_000)
    assert page.inner_text("#status").startswith("200")
    (want,) = SearchIndex.load(search_server.index).search("naive world", top_k=3)
    shown = page.eval_on_selector_all("ol.hits li", "els => els.map(e => [e.dataset.id, "
                                      "e.querySelector('.hit-score').textContent])")
    assert shown == [[h["id"], f"{h['score']:.4f}"] for h in want]
    assert page.inner_text("ol.hits li:first-child").endswith(want[0]["text"])
    page.close()
