"""A tagger's annotate page (page.tag_page_parts, tags.js) in a real browser: each token coloured by its
predicted tag, every tag's probability on hover, and hostile tokens and tag names shown as text, never run.

Skipped when /usr/bin/chromium or the playwright package is missing (`.ci/run` installs both)."""

import json
import os
import re

import numpy as np
import pytest

from charrnn.work import page
from test_annotate_page import ARGS, CHROMIUM, sync_api  # noqa: F401  (skips the module as that one does)

HOSTILE = ["</script><script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\u2028", "&amp;"]
SEQUENCES = [["Harry", "Potter", "met", *HOSTILE], ["in", "London"]]
TAGS = ["B-PER", "I-PER", "O", "<b onmouseover=alert(3)>X</b>"]


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tagpage")
    rng = np.random.default_rng(0)
    probs = rng.random((9, 4))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[3, :] = [np.nan, 0.2, 0.3, 0.5]  # a model whose scores overflowed: shown as n/a
    path = tmp / "tags.html"
    page.write_tags(str(path), SEQUENCES, probs, TAGS, level="word", title="What <script> tagged",
                    model_line="LSTM 1 x 8", checkpoint="<!--x", source="<img src=y onerror=alert(2)>.txt")
    import tempfile
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as p:
        args = ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=args)
        tab = context.new_page()
        events = {"requests": [], "dialogs": [], "errors": []}
        tab.on("request", lambda r: events["requests"].append(r.url))
        tab.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
        tab.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: events["errors"].append(str(e)))
        tab.goto(path.as_uri())
        tab.wait_for_selector("body[data-ready='1']", state="attached", timeout=10_000)
        yield tab, probs, events, path
        context.close()


def test_each_token_shows_as_text_coloured_by_its_most_likely_tag(opened):
    tab, probs, _, _ = opened
    spans = tab.locator("#text span")
    tokens = [t for seq in SEQUENCES for t in seq]
    assert spans.count() == len(tokens)
    assert spans.all_text_contents() == tokens
    best = probs.argmax(axis=1)  # as `charrnn tag` picks (a NaN row: its first tag)
    colours = {}
    for i in range(len(tokens)):
        t = int(spans.nth(i).get_attribute("data-t"))
        assert t == best[i]
        colours.setdefault(t, set()).add(spans.nth(i).evaluate("e => getComputedStyle(e).backgroundColor"))
    assert all(len(c) == 1 for c in colours.values())  # one colour per tag
    if 2 in colours:  # "O" is left uncoloured
        assert colours[2] == {"rgba(0, 0, 0, 0)"}
    assert tab.locator("#legend .tag").all_text_contents() == TAGS


def test_hover_lists_every_tag_most_likely_first(opened):
    tab, probs, _, _ = opened
    tab.hover("#text span[data-i='1']")
    rows = tab.locator("#box div").all_text_contents()
    expected = [f"{TAGS[t]}  {probs[1, t]:.3f}" for t in np.argsort(-probs[1], kind="stable")]
    assert rows == expected
    tab.hover("#text span[data-i='3']")
    assert tab.locator("#box div").all_text_contents()[-1] == f"{TAGS[0]}  n/a"


def test_no_network_no_dialog_no_script_from_hostile_text(opened):
    tab, _, events, path = opened
    tab.hover("#text span[data-i='4']")
    tab.hover("#legend .tag >> nth=3")
    tab.wait_for_timeout(200)
    assert events["requests"] == [path.as_uri()] and events["dialogs"] == [] and events["errors"] == []
    assert tab.evaluate("document.querySelectorAll('img, b[onmouseover], script').length") == 2  # data + script
    html = path.read_text()
    data = html[html.index('type="application/json">') + len('type="application/json">'):html.index("</script>")]
    assert "<" not in data and ">" not in data and "&" not in data
    assert json.loads(data)["sequences"][0][0] == SEQUENCES[0]
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", html)
