"""The web page (``pgmaxsim serve``) in a real browser: headless Chromium from the distribution's
packages driven by Selenium, against real ``pgmaxsim serve`` processes on the bundled quickstart
corpus in the suite's PostgreSQL, searching as a granted role (not the owner).

Screenshots are saved under $PGMAXSIM_TEST_ARTIFACTS (default: tmp/artifacts) /web/;
PGMAXSIM_UPDATE_DOCS=1 also copies the results page to docs/web-search.png (the README's picture).
Without chromium and chromedriver (bash scripts/install-browser.sh) these tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import psycopg
import pytest
from conftest import TEMPLATE, _fresh_db
from pgserver import LocalPostgres, free_port
from psycopg.conninfo import make_conninfo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PGMAXSIM_TEST_ARTIFACTS") or ROOT / "tmp" / "artifacts") / "web"
ROLE = "web_reader"  # searches through the page: granted usage and SELECT on the demo's table only
WAIT_S = 60          # page loads on a loaded 2-core machine (the first search loads the model)
INJURED = "how many people were injured at work"
BEES = "how do bees tell each other where the flowers are"


def explain_here() -> bool:
    from pgmaxsim.web import overlay

    return overlay.available()


def layouts_stored(dsn: str) -> bool:
    """Whether the worker stored the rows' token layouts (character spans), so there are words to mark."""
    if not explain_here():
        return False
    from pgmaxsim.index import Index

    with psycopg.connect(dsn) as c:
        return Index(c, "demo").explain(BEES, 1).kind == "text"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def demo_page(pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """``pgmaxsim demo --serve`` as the schema owner: the quickstart corpus, then the page on it.
    Yields (owner DSN, that page)."""
    fresh = _fresh_db(pg_server, TEMPLATE)
    owner = next(fresh)
    page = Server(owner, "--query", "git branches", "-k", "1", tmp=tmp_path_factory.mktemp("demo"),
                  command=("demo", "--serve"), wait_s=600)  # the demo runs first (ingest, worker)
    try:
        yield owner, page
    finally:
        page.stop()
        fresh.close()


@pytest.fixture(scope="module")
def corpus(demo_page: tuple[str, Server]) -> tuple[str, str]:
    """(owner DSN, reader DSN) of a database holding the quickstart corpus, embedded."""
    owner = demo_page[0]
    with psycopg.connect(owner, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
            c.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER")
        c.execute("SELECT maxsim.grant_usage(%s)", (ROLE,))
        c.execute(f"GRANT SELECT ON demo_documents TO {ROLE}")
        # a failed row as the worker records it (its error text is not trusted by the page either)
        c.execute("INSERT INTO maxsim.failed (index_id, row_id, step, error, attempts)"
                  " SELECT id, '999', 'encode', 'text too long: <b>42</b> tokens', 3 FROM maxsim.indexes"
                  " WHERE name = 'demo'")
    return owner, make_conninfo(owner, user=ROLE)


@pytest.fixture(scope="module")
def marks(corpus: tuple[str, str]) -> bool:
    return layouts_stored(corpus[0])


@pytest.fixture(scope="module")
def pages(corpus: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Index ``pages``: the corpus's PDF pages embedded from their images by a tiny random ColQwen2.5
    (tests/encoders_tiny.py): its rankings mean nothing, its patch grids and heatmaps are real."""
    from encoders_tiny import build_colqwen2_5

    from pgmaxsim.registry import create_index
    from pgmaxsim.worker.loop import run_worker

    owner = corpus[0]
    model = f"colqwen2_5:{build_colqwen2_5(tmp_path_factory.mktemp('tiny') / 'colqwen2_5')}"
    with psycopg.connect(owner, autocommit=True) as c:
        c.execute("CREATE TABLE demo_pages AS SELECT id, document, page, title, image, mime FROM demo_documents"
                  " WHERE kind = 'pdf'")
        c.execute("ALTER TABLE demo_pages ADD PRIMARY KEY (id)")
        create_index(c, "pages", "demo_pages", "id", image_column="image", model=model)
        c.execute(f"GRANT SELECT ON demo_pages TO {ROLE}")
    stats = run_worker(owner, indexes=["pages"], once=True, install_signals=False)
    assert stats.done == 5 and not stats.failed, stats.errors
    return "pages"


class Server:
    """A ``pgmaxsim serve`` process on a free port (its output in ``log``)."""

    def __init__(self, dsn: str, *args: str, tmp: Path, command: tuple[str, ...] = ("serve",),
                 wait_s: float = WAIT_S) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgmaxsim.cli", "--dsn", dsn, *command, "--port", str(self.port), *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pgmaxsim serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=5).close()
                return
            except urllib.error.HTTPError:  # it answers (503: its database does not)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"pgmaxsim serve did not answer in {wait_s} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM; once the server has stopped serving (its last line), the interpreter's own
        teardown (torch's, seconds on a loaded machine) is not waited for."""
        self.proc.terminate()
        deadline = time.monotonic() + 20
        while self.proc.poll() is None and time.monotonic() < deadline:
            if "terminated (SIGTERM)" in self.log.read_text():
                break
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server(corpus: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(corpus[1], "--index", "demo", tmp=tmp_path_factory.mktemp("serve"))
    # one search first: the model loads (seconds) before the tests time or photograph a page
    urllib.request.urlopen(s.url + "/?index=demo&q=warming+up", timeout=WAIT_S * 2).close()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver here: bash scripts/install-browser.sh installs Debian's packages")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--lang=en-US"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    d.set_page_load_timeout(WAIT_S)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield d
    finally:
        d.quit()


# ---------------------------------------------------------------- helpers

def wait(browser: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S).until(condition, message=f"waiting for {what} at {browser.current_url}")


def loaded(browser: Any) -> bool:
    return browser.execute_script("return document.readyState") == "complete"


def http_status(browser: Any) -> int:
    """The HTTP status of the page the browser shows (Navigation Timing's responseStatus)."""
    return int(browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus"))


def by_css(browser: Any, css: str) -> list[Any]:
    return browser.find_elements("css selector", css)


def type_and_enter(browser: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    old = browser.current_url
    box = by_css(browser, "#q")[0]
    box.clear()
    box.send_keys(text, Keys.ENTER)
    wait(browser, lambda d: d.current_url != old and "q=" in d.current_url and loaded(d), "the results page")


def images_loaded(browser: Any, css: str) -> bool:
    return bool(browser.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", css))


def screenshot(browser: Any, name: str) -> Path:
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    return path


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(url).query, keep_blank_values=True)


# ---------------------------------------------------------------- the page

def test_type_a_query_press_enter_see_ranked_pages(server: Server, browser: Any, marks: bool) -> None:
    browser.get(server.url + "/")
    assert http_status(browser) == 200
    assert by_css(browser, "#index option[selected]")[0].text == "demo"
    type_and_enter(browser, INJURED)
    assert http_status(browser) == 200
    assert query_of(browser.current_url) == {"index": ["demo"], "q": [INJURED]}  # bookmarkable
    results = by_css(browser, "#results .result")
    assert len(results) == 10
    assert [r.get_attribute("data-rank") for r in results] == [str(i) for i in range(1, 11)]
    scores = [float(r.find_element("css selector", ".score").text) for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert "northwind-annual-report-2025.pdf p.4" in results[0].find_element("css selector", ".label").text
    # the PDF pages show as pictures, loaded from the server
    wait(browser, lambda d: images_loaded(d, "#results .thumb img"), "the page thumbnails")
    assert len(by_css(browser, "#results .thumb img")) >= 2
    # where the time went: the stages maxsim.search reports, and ours
    timings = by_css(browser, "#timings")[0].text
    for stage in ("encode", "ANN prefilter", "rescoring", "scoring", "rows", "page"):
        assert stage in timings, timings
    if marks:  # text rows: the snippets mark the words that matched (static/marks.js asks /marks)
        wait(browser, lambda d: len(by_css(d, "[data-marks-done]")) == 10, "the matched words")
        assert len(by_css(browser, "#results .snippet.marked")) >= 5
        assert by_css(browser, "#results .snippet mark")
    shot = screenshot(browser, "web-search.png")
    if os.environ.get("PGMAXSIM_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "web-search.png")


def test_open_a_result_and_see_its_matches(server: Server, browser: Any, marks: bool) -> None:
    browser.get(server.url + "/?" + urlencode({"index": "demo", "q": BEES}))
    first = by_css(browser, "#results .result .label")[0]
    assert "honeybees" in first.text.lower()
    first.click()
    wait(browser, lambda d: "/row?" in d.current_url and loaded(d), "the row page")
    assert http_status(browser) == 200
    assert query_of(browser.current_url)["q"] == [BEES]
    assert "honeybees" in by_css(browser, "#row-title")[0].text.lower()
    assert float(by_css(browser, "#row-score")[0].text) > 0
    if marks:
        tokens = by_css(browser, "#tokens a")
        assert tokens[0].text == "all tokens" and len(tokens) > 2
        assert by_css(browser, "#row-body mark"), "no word of the row is marked"
        marked_all = {m.text for m in by_css(browser, "#row-body mark")}
        tokens[2].click()  # one query token's matches
        wait(browser, lambda d: "token=1" in d.current_url and loaded(d), "one token's matches")
        assert by_css(browser, "#tokens a.on")[0].text == tokens_text(browser)[2]
        assert {m.text for m in by_css(browser, "#row-body mark")} <= marked_all | {""}
    elif explain_here():
        assert "no layout to explain" in by_css(browser, "main")[0].text
    else:
        assert "pgmaxsim.explain" in by_css(browser, "main")[0].text
    screenshot(browser, "web-row-text.png")
    # a PDF page: the page itself, full size
    browser.get(server.url + "/?" + urlencode({"index": "demo", "q": INJURED}))
    by_css(browser, "#results .result .label")[0].click()
    wait(browser, lambda d: "/row?" in d.current_url and loaded(d), "the page's row")
    wait(browser, lambda d: images_loaded(d, "#page-image"), "the page image")
    if marks:
        assert by_css(browser, "#row-body mark")
    screenshot(browser, "web-row-page.png")


def colourful(png: bytes) -> float:
    """The share of clearly coloured pixels (a page is black on white; the heatmap's colormap is not)."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean())


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=WAIT_S) as r:
        return r.read()


def test_page_images_carry_their_heatmaps(server: Server, browser: Any, pages: str) -> None:
    if not layouts_stored_for(pages, server):
        pytest.skip("the worker stored no patch grid for the page images (pgmaxsim.explain layouts)")
    browser.get(server.url + "/?" + urlencode({"index": pages, "q": "revenue by region"}))
    assert http_status(browser) == 200
    assert len(by_css(browser, "#results .result")) == 5
    wait(browser, lambda d: images_loaded(d, "#results .thumb img"), "the heatmap thumbnails")
    thumb = by_css(browser, "#results .thumb img")[0].get_attribute("src")
    plain = thumb.replace("&q=revenue+by+region", "")
    assert plain != thumb
    assert colourful(fetch(thumb)) > colourful(fetch(plain)) + 0.05  # the map lies over the page
    screenshot(browser, "web-pages-search.png")

    by_css(browser, "#results .result .label")[0].click()
    wait(browser, lambda d: "/row?" in d.current_url and loaded(d), "the page's row")
    wait(browser, lambda d: images_loaded(d, "#page-image.heatmap"), "the page's heatmap")
    tokens = by_css(browser, "#tokens a")
    assert tokens[0].text == "all tokens" and len(tokens) >= 3
    every = fetch(by_css(browser, "#page-image")[0].get_attribute("src"))
    tokens[1].click()  # the first query token's own map
    wait(browser, lambda d: "token=0" in d.current_url and loaded(d), "one token's heatmap")
    wait(browser, lambda d: images_loaded(d, "#page-image.heatmap"), "one token's heatmap")
    one = fetch(by_css(browser, "#page-image")[0].get_attribute("src"))
    assert one != every and colourful(one) > 0.05
    shot = screenshot(browser, "web-pages-heatmap.png")
    if os.environ.get("PGMAXSIM_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "web-heatmap.png")


def layouts_stored_for(index: str, server: Server) -> bool:
    html = fetch(server.url + "/row?" + urlencode({"index": index, "id": _first_id(server, index), "q": "x"}))
    return b'class="heatmap"' in html


def _first_id(server: Server, index: str) -> str:
    import re

    html = fetch(server.url + "/?" + urlencode({"index": index, "q": "revenue by region"})).decode()
    m = re.search(r'data-id="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def tokens_text(browser: Any) -> list[str]:
    return [a.text for a in by_css(browser, "#tokens a")]


def test_empty_query_unknown_index_and_row_say_so(server: Server, browser: Any) -> None:
    browser.get(server.url + "/?index=demo")
    type_and_enter(browser, "   ")
    assert http_status(browser) == 400
    assert "the query is empty" in by_css(browser, "#error-message")[0].text
    screenshot(browser, "web-empty-query.png")

    browser.get(server.url + "/?" + urlencode({"index": "no_such_index", "q": "bees"}))
    assert http_status(browser) == 404
    message = by_css(browser, "#error-message")[0].text
    assert "no_such_index" in message and "demo" in message  # names what there is

    browser.get(server.url + "/row?index=demo&id=987654")
    assert http_status(browser) == 404
    assert "987654" in by_css(browser, "#error-message")[0].text

    browser.get(server.url + "/?index=demo&q=bees&k=0")
    assert http_status(browser) == 400

    browser.get(server.url + "/no/such/page")
    assert http_status(browser) == 404
    assert by_css(browser, "#error-title")[0].text == "Not found"


def test_script_and_quotes_in_the_query_are_shown_as_text(server: Server, browser: Any) -> None:
    nasty = """<script>document.title="pwned"</script> "double" 'single' & <b>bold</b>"""
    browser.get(server.url + "/?index=demo")
    type_and_enter(browser, nasty)
    assert http_status(browser) == 200
    assert query_of(browser.current_url)["q"] == [nasty]
    assert by_css(browser, "#shown-query")[0].text == nasty
    assert by_css(browser, "#q")[0].get_attribute("value") == nasty
    assert browser.title.startswith(nasty)  # the script did not run: it would have replaced the title
    assert browser.execute_script("return document.querySelectorAll('main script, main b, header b').length") == 0
    assert "&lt;script&gt;" in browser.page_source
    by_css(browser, "#results .result .label")[0].click()  # the row page carries the query on
    wait(browser, lambda d: "/row?" in d.current_url and loaded(d), "the row page")
    assert query_of(browser.current_url)["q"] == [nasty]
    assert browser.execute_script("return document.querySelectorAll('main script, main b').length") == 0
    screenshot(browser, "web-escaped.png")


def test_demo_serve_opens_the_quickstart_on_the_page(demo_page: tuple[str, Server]) -> None:
    page = demo_page[1]
    out = page.log.read_text()
    assert "[6/6]" in out and "pgmaxsim serve: http://127.0.0.1:" in out and "?index=demo" in out
    html = fetch(page.url + "/?" + urlencode({"q": "git branches"})).decode()  # the demo's index by default
    assert "Working with branches in git" in html


def test_status_page_for_the_reader_and_the_owner(server: Server, demo_page: tuple[str, Server],
                                                  browser: Any) -> None:
    browser.get(server.url + "/status")
    assert http_status(browser) == 200
    row = by_css(browser, "#indexes tbody tr")[0].text
    assert row.startswith("demo") and " 41 " in f" {row} "
    assert "not the schema owner" in by_css(browser, "main")[0].text  # says what it cannot show

    browser.get(demo_page[1].url + "/status")  # the demo's page, as the owner: everything
    assert http_status(browser) == 200
    text = by_css(browser, "main")[0].text
    assert "Failed rows of demo" in text
    assert "text too long: <b>42</b> tokens" in text  # the error as text, not markup
    assert by_css(browser, "#workers tbody tr"), "the demo's worker heartbeat"
    assert "no scorer configured" in by_css(browser, "#scorer")[0].text
    screenshot(browser, "web-status.png")


def test_database_down_then_back(browser: Any, tmp_path: Path) -> None:
    from pgmaxsim.db import migrate

    db = LocalPostgres().start()  # its own server: this test stops it
    try:
        db.wait_ready()
        migrate.upgrade(db.dsn())
        page = Server(db.dsn(), tmp=tmp_path)
        try:
            browser.get(page.url + "/")
            assert http_status(browser) == 200
            assert "no indexes here yet" in by_css(browser, "main")[0].text
            db._pg_ctl("stop", "-m", "immediate", "-w")
            for path in ("/?index=demo&q=bees", "/status", "/"):
                browser.get(page.url + path)
                assert http_status(browser) == 503
                assert by_css(browser, "#error-title")[0].text == "Database unavailable"
                assert "connect" in by_css(browser, "#error-message")[0].text
            screenshot(browser, "web-database-down.png")
            db._pg_ctl("start", "-w", "-t", "60")
            browser.get(page.url + "/")  # the page recovers by itself
            assert http_status(browser) == 200
        finally:
            page.stop()
    finally:
        db.stop()

