"""The annotate page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skipped when /usr/bin/chromium or the playwright package is missing (`.ci/run` installs both).
One browser for the module; one page, opened once, serves every test.
"""

import os
import re
import tempfile

import numpy as np
import pytest

import charrnn
from tiny_runs import invoke, make_run

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)

CHARS = 'abcdefgh \n"()'
HOSTILE = '</script><script>alert(1)</script> <img src=x onerror=alert(1)> \u2028 "x" &amp; '
TEXT = 'bad cafe "faced" (a bead)\nhe fed a deaf hag\n' * 3 + HOSTILE + "\nbad (fade)\n"
# a file name is shown too; it needs no slash to open a comment or a script inside the data block
NAME = "<!--<script><img src=x onerror=alert(2)><b>bold.txt"
ARGS = ["--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as p:
        args = ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=args, viewport={"width": 1200, "height": 900})
        yield context
        context.close()


@pytest.fixture(scope="module")
def opened(browser, tmp_path_factory):
    """(page, annotation, events) for TEXT annotated by a tiny LSTM, the page's events recorded from the start."""
    tmp = tmp_path_factory.mktemp("page")
    make_run(tmp / "run", CHARS, hidden=12)
    text_file = tmp / NAME
    text_file.write_text(TEXT)
    code, _, err = invoke(["annotate", text_file, "-c", tmp / "run", "--out", tmp / "page.html"])
    assert code == 0, err
    ann = charrnn.load(str(tmp / "run")).annotate(TEXT)
    page = browser.new_page()
    events = {"requests": [], "dialogs": [], "errors": []}
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    url = (tmp / "page.html").as_uri()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=10_000)
    yield page, ann, events, url
    page.close()


def rgba(css: str):
    m = re.search(r"rgba?\(([^)]*)\)", css)
    return [float(x) for x in m.group(1).split(",")] if m else None


def test_the_characters_render(opened):
    page, ann, _, _ = opened
    assert page.locator("#text").text_content() == TEXT
    assert page.locator("#text span").count() == len(ann.pieces)
    assert page.locator("#text img, #text script").count() == 0  # the text is text, never markup
    assert "tokens scored" in page.locator("#totals").text_content()
    assert NAME in page.locator("h1").text_content() and page.locator("b", has_text="bold").count() == 0


def test_hovering_a_character_shows_its_top_k_box(opened):
    page, ann, _, _ = opened
    for i in (5, 40):
        page.hover(f"#text span[data-i='{i}']")
        box = page.locator("#box")
        assert box.is_visible()
        row = ann.rows[ann.piece_row[i]]
        guesses = [(g.locator(".tok").text_content(), g.locator(".p").text_content())
                   for g in box.locator(".guess").all()]
        shown = {"\n": "\u23ce", " ": "\u2423"}
        expected = [(shown.get(t, t), f"{100 * p:.1f}%") for t, p in row.top]
        if row.rank > len(row.top):  # then the true token follows, with its own probability
            expected.append((shown.get(row.token, row.token), f"{100 * row.prob:.1f}%"))
        assert guesses == expected
        assert f"rank {row.rank}" in box.locator(".foot").first.text_content()
        assert box.locator(".actual").text_content() == shown.get(TEXT[i], TEXT[i])
    page.mouse.move(1, 1)


def test_choosing_a_unit_recolours_the_text(opened):
    page, ann, _, _ = opened
    before = page.locator("#text span[data-i='3']").evaluate("e => e.style.background")
    unit = 7
    page.select_option("#layer", "1")
    page.select_option("#kind", "c")
    page.fill("#unit", str(unit))
    assert page.locator("#mode-neuron").is_checked()
    values = ann.cell[1][:, unit]
    colours = page.locator("#text span").evaluate_all("spans => spans.map(s => s.style.background)")
    assert colours[3] != before
    for i in range(0, 40):
        step = ann.piece_step[i]
        q = np.clip(np.rint(values[step] * 127), -127, 127) / 127
        r, g, b, a = rgba(colours[i]) + ([1.0] if len(rgba(colours[i])) == 3 else [])
        assert (r, g, b) == ((214, 48, 39) if q >= 0 else (38, 102, 214))
        assert a == pytest.approx(0.9 * abs(q), abs=1 / 255 + 1e-3)  # the browser keeps alpha in 8 bits
    # a click in "units worth a look" shows that unit
    first = page.locator("tr.look").first
    first.click()
    look = ann.units_worth_a_look()[0]
    assert page.locator("#unit").input_value() == str(look["unit"]) and "sel" in first.get_attribute("class")
    page.check("#mode-surprise")
    assert page.locator("#text span[data-i='3']").evaluate("e => e.style.background") == before


def test_no_network_no_dialog_no_console_error_even_for_a_hostile_text(opened):
    page, _, events, url = opened
    page.hover(f"#text span[data-i='{TEXT.index('<img')}']")  # the hostile part, shown and hovered
    page.wait_for_timeout(200)
    assert events["requests"] == [url]  # the page itself, and nothing else
    assert events["dialogs"] == [] and events["errors"] == []
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.locator("#saturation svg").count() == 2
