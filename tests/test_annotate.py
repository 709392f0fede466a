"""charrnn annotate and Model.annotate: per-token scores, states, gates, features, the page's data, the CLI."""

import json
import math

import numpy as np
import pytest

import charrnn
from click.testing import CliRunner

from charrnn.work import annotate, page
from charrnn import cli
from charrnn.data.vocab import EOS
from reference import naive_step
from tiny_runs import invoke, make_run

CHARS = 'abcdefgh \n"()'
TEXT = 'bad cafe "faced" (a bead)\nhe fed a deaf hag\n' * 4
HOSTILE = '</script><script>alert(1)</script> <img src=x onerror=alert(1)> \u2028 "q" &amp;\n'


@pytest.fixture
def run(tmp_path):
    make_run(tmp_path / "run", CHARS, hidden=12, val_text=TEXT * 3)
    return tmp_path / "run"


def float64_params(m):
    return {k: v.astype(np.float64) for k, v in m.params.items()}


# ---------------------------------------------------------------- against eval and an independent reference


@pytest.mark.parametrize("mode", ["stream", "lines"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "peephole", "simple-gru"])
def test_mean_surprisal_is_evals_loss(tmp_path, mode, cell):
    # float32 models, as training writes them: eval runs in float32, annotate in float64 (see annotate.py)
    make_run(tmp_path / "r", CHARS, mode=mode, cell=cell)
    (tmp_path / "t.txt").write_text(TEXT + "zz\n")  # two unknown characters too
    code, out, err = invoke(["eval", tmp_path / "t.txt", "-c", tmp_path / "r", "--json"])
    assert code == 0, err
    loss = json.loads(out)
    code, out, err = invoke(["annotate", tmp_path / "t.txt", "-c", tmp_path / "r", "--json"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == loss["tokens"] and sum(r["unknown"] for r in rows) == loss["unknown"] == 2
    assert abs(-np.mean([r["logprob"] for r in rows]) - loss["loss"]) < 1e-6
    assert "2 of" in err and "unknown" in err


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "peephole", "simple-gru"])
def test_each_token_matches_the_naive_reference(tmp_path, cell):
    make_run(tmp_path / "r", CHARS, cell=cell, layers=2, hidden=10)
    m = charrnn.load(str(tmp_path / "r"))
    ann = m.annotate(TEXT, top_k=4)
    params, config = float64_params(m), m.config
    ids = m.vocab.encode(TEXT).astype(np.int64)
    lstm = cell in ("lstm", "peephole")
    state = tuple(np.zeros((config.layers, 1, config.hidden)) for _ in range(2 if lstm else 1))
    for t, token in enumerate(ids):
        previous = state
        logits, state = naive_step(params, config, [token], state)
        for k in range(config.layers):
            np.testing.assert_allclose(ann.hidden[k][t], state[0][k, 0], atol=1e-12)
            if lstm:
                c_prev, c, h = previous[1][k, 0], state[1][k, 0], state[0][k, 0]
                g = ann.gates[k]
                np.testing.assert_allclose(ann.cell[k][t], np.tanh(c), atol=1e-12)
                np.testing.assert_allclose(g["f"][t] * c_prev + g["i"][t] * g["g"][t], c, atol=1e-12)
                np.testing.assert_allclose(g["o"][t] * np.tanh(c), h, atol=1e-12)
            elif cell == "gru":
                g = ann.gates[k]
                np.testing.assert_allclose((1 - g["z"][t]) * g["n"][t] + g["z"][t] * previous[0][k, 0],
                                           state[0][k, 0], atol=1e-12)
            elif cell == "simple-gru":
                g = ann.gates[k]
                np.testing.assert_allclose(g["u"][t] * g["c~"][t] + (1 - g["u"][t]) * previous[0][k, 0],
                                           state[0][k, 0], atol=1e-12)
        if t + 1 == len(ids):
            break
        logp = logits[0] - logits[0].max()
        logp -= np.log(np.exp(logp).sum())
        row = ann.rows[t]  # the row scoring token t + 1
        target = ids[t + 1]
        assert row.id == target and row.token == TEXT[t + 1] and row.piece == t + 1
        assert row.logprob == pytest.approx(logp[target], abs=1e-10)
        assert row.rank == 1 + int((logp > logp[target]).sum())
        assert [name for name, _ in row.top] == [m.vocab.tokens[i] if i > 2 else ["end", "unknown", "start"][i]
                                                  for i in np.argsort(-logp, kind="stable")[:4]]
        assert row.top[0][1] == pytest.approx(np.exp(logp.max()), abs=1e-10)
        assert row.bits == pytest.approx(-logp[target] / math.log(2)) and row.prob == pytest.approx(np.exp(logp[target]))
    assert len(ann) == len(ids) - 1 and ann.cell_type == cell
    if cell == "rnn":
        assert ann.gates == [{}, {}] and ann.saturation() == [{}, {}]


def test_lines_model_scores_each_line_from_its_start_through_its_end(tmp_path):
    make_run(tmp_path / "r", CHARS, mode="lines", cell="gru")
    m = charrnn.load(str(tmp_path / "r"))
    text = "bad\n\n  \nhe fed"  # a blank and a whitespace line are not scored; the last line has no newline
    ann = m.annotate(text)
    assert ann.pieces == ["b", "a", "d", "\n", "\n", " ", " ", "\n", "h", "e", " ", "f", "e", "d", ""]
    assert [r.token for r in ann] == ["b", "a", "d", "\n", "h", "e", " ", "f", "e", "d", ""]
    assert [r.end for r in ann] == [False] * 3 + [True] + [False] * 6 + [True]
    assert all(r.id == EOS for r in ann if r.end)
    assert ann.piece_step.tolist() == [1, 2, 3, -1, -1, -1, -1, -1, 5, 6, 7, 8, 9, 10, -1]
    assert ann.step_piece.tolist() == [-1, 0, 1, 2, -1, 8, 9, 10, 11, 12, 13]  # steps 0 and 4 read the start
    assert ann.score.tokens == 11 and ann.score.loss == pytest.approx(m.score(text).loss, abs=1e-6)


# ---------------------------------------------------------------- features, correlations, saturation


def test_features_of_a_small_text(run):
    m = charrnn.load(str(run))
    ann = m.annotate('a "b" (c)\nDe f')
    f = {name: values.tolist() for name, values in ann.features.items()}
    #                          a  sp  "  b  "  sp  (  c  )  \n  D  e  sp f
    assert f["inside quotes"] == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert f["inside brackets"] == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert f["position in line"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3]
    assert f["start of word"] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert f["uppercase"] == [0] * 10 + [1, 0, 0, 0]
    assert f["whitespace"] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0]


def test_correlations_are_pearsons_r():
    rng = np.random.default_rng(0)
    values, feats = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    feats[7, 1] = np.nan  # a start token's step: left out
    feats[:, 2] = 1.0  # a feature that does not vary
    r = annotate.correlations(values, feats)
    keep = np.arange(50) != 7
    for u in range(4):
        for j in range(2):
            assert r[u, j] == pytest.approx(np.corrcoef(values[keep, u], feats[keep, j])[0, 1])
    assert np.isnan(r[:, 2]).all()


def test_units_worth_a_look_finds_a_unit_that_tracks_brackets(tmp_path):
    # unit 3 of layer 1's cell state counts brackets: "(" writes +1, ")" writes -1, the forget gate keeps it
    H = 8

    def bracket_unit(params, vocab):
        for name in params:
            if name.startswith("rnn."):
                params[name][:] = 0
        emb = params["embedding.weight"]
        emb[:] = 0
        emb[vocab.tokens.index("("), 0] = emb[vocab.tokens.index(")"), 1] = 1
        W, b = params["rnn.weight_ih_l0"], params["rnn.bias_ih_l0"]
        W[3, :2], b[3] = 20, -10      # input gate of unit 3: open at a bracket, shut otherwise
        b[H + 3] = 20                 # forget gate: keep
        W[2 * H + 3, :2] = 20, -20    # candidate: +1 at "(", -1 at ")"
        b[3 * H + 3] = 20             # output gate: open

    make_run(tmp_path / "r", CHARS, layers=1, hidden=H, edit=bracket_unit)
    m = charrnn.load(str(tmp_path / "r"))
    ann = m.annotate("ab (cd (ef) gh) ab " * 6 + "(abc) de")
    look = ann.units_worth_a_look()
    best = look[0]
    assert (best["layer"], best["unit"], best["feature"]) == (0, 3, "inside brackets") and best["r"] > 0.8
    assert [u["unit"] for u in look] == [3]  # the other units never move in this hand-made model
    left, right = ann.saturation()[0]["f"]
    assert right[3] == 1.0 and left[3] == 0.0  # the forget gate at sigmoid(20) is always open
    assert set(ann.saturation()[0]) == {"i", "f", "o"}


def test_units_worth_a_look_give_each_feature_a_unit(tmp_path):
    make_run(tmp_path / "r", CHARS + "H", layers=2, hidden=16)
    ann = charrnn.load(str(tmp_path / "r")).annotate(TEXT.replace("he", "He"))
    look = ann.units_worth_a_look(per_layer=8)
    for k in (0, 1):
        layer = [u for u in look if u["layer"] == k]
        assert {u["feature"] for u in layer} == set(annotate.FEATURES)  # one feature cannot fill the list
        assert len(layer) == 8 and len({u["unit"] for u in layer}) == 8
        assert [abs(u["r"]) for u in layer] == sorted((abs(u["r"]) for u in layer), reverse=True)
        for u in layer:
            values = (ann.cell if u["kind"] == "c" else ann.hidden)[k][:, u["unit"]]
            assert u["r"] == pytest.approx(np.corrcoef(values, ann.features[u["feature"]])[0, 1])


# ---------------------------------------------------------------- the page's data


def test_page_embeds_hostile_text_as_escaped_json_that_round_trips(run):
    m = charrnn.load(str(run))
    ann = m.annotate(TEXT + HOSTILE)
    html = page.render(ann, title="t </script>", model_line="m", checkpoint="c", source="s")
    assert html.count("</script>") == 2 and html.count("<script") == 2  # the data block and the script, only
    assert "<img" not in html and "\u2028" not in html and "&amp;" not in html.split("<script>")[0][-500:]
    assert "default-src 'none'" in html
    raw = html.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert raw.isascii()
    data = json.loads(raw)
    assert "".join(data["pieces"]) == TEXT + HOSTILE
    assert data["totals"]["tokens"] == ann.score.tokens and data["k"] == 5
    assert data["unknown"][len(TEXT)] is True and data["unknown"][0] is False  # "<" is not in the vocabulary
    # 8 bits per value, unit-major: unit u's values at every step
    h = np.frombuffer(__import__("base64").b64decode(data["layers"][1]["h"]), np.uint8).reshape(12, -1)
    np.testing.assert_allclose((h.astype(float) - 128) / 127, ann.hidden[1].T, atol=0.5 / 127 + 1e-12)


def test_quantize_rounds_to_the_nearest_of_255_levels():
    v = np.array([[-1.0, -0.5, 0.0, 0.004, 0.5, 1.0]])
    q = np.frombuffer(__import__("base64").b64decode(page.quantize(v)), np.uint8)
    assert q.tolist() == [1, 64, 128, 129, 192, 255]


# ---------------------------------------------------------------- the command line


def test_the_page_goes_to_the_run_directory_by_default_and_says_so(run, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    code, out, err = invoke(["annotate", tmp_path / "t.txt", "-c", run])
    assert code == 0 and out == ""
    assert f"Wrote {run / 'annotate.html'}" in err
    assert (run / "annotate.html").read_text().startswith("<!DOCTYPE html>")
    code, _, err = invoke(["annotate", tmp_path / "t.txt", "-c", run, "--out", tmp_path / "p.html"])
    assert code == 0 and f"Wrote {tmp_path / 'p.html'}" in err and (tmp_path / "p.html").exists()
    code, _, err = invoke(["annotate", "-c", run, "--out", tmp_path / "held.html"])  # the held-out split
    assert code == 0 and "held-out" in (tmp_path / "held.html").read_text()


def test_json_lines_with_states_and_the_cut(run, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT * 10)
    code, out, err = invoke(["annotate", tmp_path / "t.txt", "-c", run, "--json", "--states", "--max-chars", 50,
                             "--top-k", 3])
    assert code == 0
    assert "first 50 characters" in err and f"{len(TEXT) * 10 - 50:,} more are cut" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 49 and "".join(r["token"] for r in rows) == (TEXT * 10)[1:50]
    first = rows[0]
    assert set(first) == {"token", "id", "logprob", "prob", "bits", "rank", "top_k", "unknown", "end", "states"}
    assert len(first["top_k"]) == 3 and first["prob"] == pytest.approx(math.exp(first["logprob"]))
    layer = first["states"][1]
    assert len(layer["h"]) == len(layer["tanh_c"]) == 12 and set(layer["gates"]) == {"i", "f", "g", "o"}
    ann = charrnn.load(str(run)).annotate((TEXT * 10)[:50])
    assert layer["h"] == ann.hidden[1][1].tolist()  # row 0 scores token 1, which step 1 reads


def test_stdin_and_bad_input_are_one_line_errors(run, tmp_path):
    (tmp_path / "bin").write_bytes(b"\x00\x01binary")
    (tmp_path / "one.txt").write_text("a")
    # exit 1: input that cannot be used; 2: a usage error (an option value) -- docs/commands.md, "Exit status"
    for args, message, exit_code in [
        (["annotate", tmp_path / "bin", "-c", run], "looks like a binary file", 1),
        (["annotate", tmp_path / "one.txt", "-c", run, "--top-k", 0], "--top-k must be at least 1", 2),
        (["annotate", tmp_path / "one.txt", "-c", run], "nothing to annotate", 1),
    ]:
        code, out, err = invoke(args + ["-q"])
        assert code == exit_code and out == "" and err.startswith("Error: ") and message in err, err
        assert err.count("\n") == 1
    # paths that do not exist, named on the command line: usage errors
    for args, name in [(["annotate", tmp_path / "missing.txt", "-c", run], "missing.txt"),
                       (["annotate", tmp_path / "bin", "-c", tmp_path / "none"], "none")]:
        code, out, err = invoke(args)
        assert code == 2 and out == "" and "does not exist" in err and name in err and "Traceback" not in err

    with CliRunner().isolation(input=b"bad cafe\n") as (out, err, _):
        cli.main(["annotate", "-", "-c", str(run), "--json"])
    tokens = [json.loads(line)["token"] for line in out.getvalue().decode().splitlines()]
    assert "".join(tokens) == "ad cafe\n"


def test_annotate_reads_only_what_it_shows(run, tmp_path):
    import tracemalloc

    text = "bad cafe\r\nfaced é日🎉 a bead\n"
    (tmp_path / "big.txt").write_text(text * 300_000, newline="")  # 8 MB: read whole, 8 MB of bytes and 8 of text
    tracemalloc.start()
    try:
        code, out, err = invoke(["annotate", tmp_path / "big.txt", "-c", run, "--json", "--max-chars", 50])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    shown = (text.replace("\r\n", "\n") * 2)[:50]
    assert "".join(json.loads(line)["token"] for line in out.splitlines()) == shown[1:]
    total = len(text.replace("\r\n", "\n")) * 300_000  # the rest is counted in chunks, not held
    assert f"first 50 characters of {tmp_path / 'big.txt'}; {total - 50:,} more are cut" in err
    assert peak < 6 << 20


# ---------------------------------------------------------------- memory: what grows with the text is what is shown


GOLDEN = __import__("pathlib").Path(__file__).with_name("annotate_golden.json")


def _close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-11)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("case", ["stream-lstm", "lines-gru"])
def test_page_and_json_are_what_the_whole_text_implementation_wrote(tmp_path, case):
    # annotate_golden.json was written by the implementation that kept every step's float64 state and gates
    # and rendered the page as one string (before the chunked pass): the page's data must be the same to
    # the last digit it shows, the --json --states records the same numbers (stored there to 12 decimals)
    mode, cell = case.split("-")
    golden = json.loads(GOLDEN.read_text())[case]
    text = 'bad "cafe" (a bead)\n\nHe fed a deaf hag\nzz a (b) "c"'
    make_run(tmp_path / "r", 'abcdefgh \n"()H', mode=mode, cell=cell, layers=2, hidden=6)
    (tmp_path / "t.txt").write_text(text)
    code, out, err = invoke(["annotate", tmp_path / "t.txt", "-c", tmp_path / "r", "--json", "--states",
                             "--top-k", 3])
    assert code == 0, err
    assert _close([json.loads(line) for line in out.splitlines()], golden["json"])
    ann = charrnn.load(str(tmp_path / "r")).annotate(text, top_k=3)
    html = page.render(ann, title="t", model_line="m", checkpoint="c", source="s")
    raw = html.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(raw) == golden["page"]
    page.write(tmp_path / "p.html", ann, title="t", model_line="m", checkpoint="c", source="s")
    assert (tmp_path / "p.html").read_text() == html  # written in pieces, the same bytes


def test_chunked_pass_equals_one_chunk(tmp_path, monkeypatch):
    # states carried across chunk boundaries: a 3-step chunk gives what one chunk gives, on a text of 2 lines
    make_run(tmp_path / "r", CHARS, mode="lines", cell="lstm", layers=2, hidden=8)
    m = charrnn.load(str(tmp_path / "r"))
    whole = m.annotate(TEXT)
    monkeypatch.setattr(annotate, "CHUNK", 3)
    chunked = m.annotate(TEXT)
    np.testing.assert_allclose(chunked.logprob, whole.logprob, rtol=0, atol=1e-12)
    for k in range(2):
        np.testing.assert_allclose(chunked.hidden[k], whole.hidden[k], rtol=0, atol=1e-12)
        assert (chunked.quantized[k]["c"] == whole.quantized[k]["c"]).all()
    assert chunked.saturation()[1]["f"][1].tolist() == whole.saturation()[1]["f"][1].tolist()
    assert [(u["unit"], u["feature"]) for u in chunked.units_worth_a_look()] == \
        [(u["unit"], u["feature"]) for u in whole.units_worth_a_look()]


def _page_peak(m, text, path) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        ann = m.annotate(text, max_chars=None)
        page.write(path, ann, title="t", model_line="m", checkpoint="c", source="s")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_annotate_and_its_page_hold_a_bounded_amount_per_character(tmp_path, monkeypatch):
    # A 2 x 32 LSTM: the page shows 4 x 32 bytes of activations per step (h and tanh(c), 8 bits each), and per
    # token a log-probability, a rank and 5 guesses. Keeping every step's float64 h, tanh(c) and 4 gates
    # (2 x 6 x 32 x 8 = 3,072 bytes, before the arrays' own overhead) and the page as several whole strings
    # took 10,800 bytes per character (tracemalloc); now about 600. The growth from N to 4N must stay under 1,500.
    monkeypatch.setattr(annotate, "CHUNK", 32)  # what a pass holds at once: the same for both texts
    make_run(tmp_path / "r", CHARS, layers=2, hidden=32)
    m = charrnn.load(str(tmp_path / "r"))
    n = 300
    small = _page_peak(m, (TEXT * 100)[:n], tmp_path / "a.html")
    large = _page_peak(m, (TEXT * 400)[: 4 * n], tmp_path / "b.html")
    assert (large - small) / (3 * n) < 1500, (small, large)
    # and the page grows by a fixed amount per character: 4/3 x 128 bytes of base64 and the per-token data
    growth = ((tmp_path / "b.html").stat().st_size - (tmp_path / "a.html").stat().st_size) / (3 * n)
    assert 4 / 3 * 128 < growth < 300, growth


def test_the_held_out_split_is_decoded_only_as_far_as_it_is_shown(tmp_path):
    for mode in ("stream", "lines"):
        run = tmp_path / mode
        make_run(run, CHARS, mode=mode, hidden=8, val_text=TEXT * 20)
        m = charrnn.load(str(run))
        whole = m.heldout_text()
        start, total = m.heldout_start(50)
        assert total == len(whole) and whole.startswith(start) and 50 <= len(start) <= 50 + 30  # one line more
        assert m.heldout_start(None) == (whole, len(whole))
        code, out, err = invoke(["annotate", "-c", run, "--max-chars", 50, "--out", tmp_path / f"{mode}.html"])
        assert code == 0, err
        assert f"first 50 characters of the held-out split; {len(whole) - 50:,} more are cut" in err
        raw = (tmp_path / f"{mode}.html").read_text().split('type="application/json">', 1)[1].split("</script>")[0]
        assert json.loads(raw)["cut"] == len(whole) - 50
