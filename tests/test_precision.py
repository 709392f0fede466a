"""--precision bf16: a saved setting under which every matrix product takes bfloat16 inputs (core/bf16.py).

- A whole training run on AVX512-BF16 tiles equals, bit for bit, the same run forced onto the reference
  (CHARRNN_BF16_REFERENCE=1, as on a CPU without AVX512-BF16): the run's bits depend on its settings and
  seed only. Sampling and scoring a bf16 model work there too, with the same results.
- It is really used: the weights differ from float32's, and the recurrence's outputs stay within the
  bound bfloat16 inputs allow of float32's.
- The precision is saved with the model (info says so), and what it cannot serve is a one-line error.
- A fresh language model in float32 takes bf16 where this CPU runs its tiles (the compiled kernels and
  AVX512-BF16), float32 elsewhere, for other tasks and dtypes, and wherever the user says so.
(Resuming a bf16 run bit for bit is one of tests/test_resume.py's configs.)
"""

import numpy as np
import pytest

from charrnn.core.model import ModelConfig
from charrnn.files.config import TrainConfig, fill_auto_settings
from charrnn.runs import models
from tiny_runs import TINY, compiled, invoke, without

bf16 = compiled("bf16")
kernels = compiled("kernels")

# the precision open: each test gives its own (TINY's float32 is for the other tests)
RUN = [*without(TINY, "--precision"), "--max-steps", "6", "--eval-every", "3", "--seed", "3"]


def train(corpus_file, out, *extra):
    result = invoke(["train", corpus_file, "--out", out, "--quiet", *RUN, *extra])
    assert result.exit_code == 0, result.stderr
    return models.load_checkpoint(out)


def test_a_bf16_run_has_the_same_bits_on_the_tiles_and_on_the_reference(corpus_file, tmp_path, monkeypatch):
    fast, config, *_ = train(corpus_file, tmp_path / "fast", "--precision", "bf16")
    assert config.precision == "bf16"
    monkeypatch.setenv("CHARRNN_BF16_REFERENCE", "1")
    ref, *_ = train(corpus_file, tmp_path / "ref", "--precision", "bf16")
    assert all(fast[k].tobytes() == ref[k].tobytes() for k in fast)
    sampled = invoke(["sample", "-c", tmp_path / "fast", "-n", "30", "--seed", "1"])
    scored = invoke(["eval", "-c", tmp_path / "fast"])
    assert sampled.exit_code == 0 and scored.exit_code == 0, sampled.stderr + scored.stderr
    monkeypatch.delenv("CHARRNN_BF16_REFERENCE")
    assert invoke(["sample", "-c", tmp_path / "fast", "-n", "30", "--seed", "1"]).stdout == sampled.stdout
    assert invoke(["eval", "-c", tmp_path / "fast"]).stdout == scored.stdout
    f32, config32, *_ = train(corpus_file, tmp_path / "f32", "--precision", "float32")
    assert config32.precision == "float32"
    assert any(fast[k].tobytes() != f32[k].tobytes() for k in fast)  # the products really were bf16's
    assert "bf16 products" in invoke(["info", "-c", tmp_path / "fast"]).stdout


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "peephole", "simple-gru"])
def test_the_bf16_recurrence_is_float32_s_within_bfloat16_rounding(cell, monkeypatch):
    rng = np.random.default_rng(4)
    T, B, H = 6, 5, 24
    G = {"rnn": 1, "lstm": 4, "gru": 3, "peephole": 4, "simple-gru": 2}[cell]
    xp = rng.standard_normal((T, B, G * H)).astype(np.float32)
    W_hh = (rng.standard_normal((G * H, H)) / np.sqrt(H)).astype(np.float32)
    b = rng.standard_normal(G * H).astype(np.float32) * np.float32(0.1)
    n_states = 2 if cell in ("lstm", "peephole") else 1
    state = tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in range(n_states))
    extra = tuple(rng.standard_normal(H).astype(np.float32) * np.float32(0.1) for _ in range(3)) \
        if cell == "peephole" else ()
    d_hs = rng.standard_normal((T, B, H)).astype(np.float32)
    results = {}
    for precision in ("float32", "bf16", "bf16-reference"):
        monkeypatch.setenv("CHARRNN_BF16_REFERENCE", "1" if precision == "bf16-reference" else "0")
        hs, st, cache = kernels.sequence_forward(cell, xp, state, W_hh, b, extra=extra,
                                                 precision=precision.split("-")[0])
        d_xp, d_s0, grads = kernels.sequence_backward(d_hs, None, cache)
        results[precision] = (hs, d_xp, grads["W_hh"])
    for a, b_ in zip(results["bf16"], results["bf16-reference"]):  # compiled loop == Python loop, bit for bit
        assert a.tobytes() == b_.tobytes()
    for a, b_ in zip(results["bf16"], results["float32"]):  # bfloat16 inputs: a few parts in 2^8
        assert not np.array_equal(a, b_)
        assert np.abs(a - b_).max() <= 0.05 * max(1.0, np.abs(b_).max())


@pytest.mark.parametrize("args,says", [
    (["--precision", "bf16", "--dtype", "float64"], "float32 language models"),
    (["--precision", "bf16", "--task", "classify"], "float32 language models"),
])
def test_what_bf16_cannot_serve_is_one_line(corpus_file, tmp_path, args, says):
    result = invoke(["train", corpus_file, "--out", tmp_path / "run", *RUN, *args])
    assert result.exit_code != 0 and says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bf16_needs_the_compiled_recurrence_and_says_so(corpus_file, tmp_path, monkeypatch):
    from charrnn.core import cells, model

    monkeypatch.setattr(model, "recurrence", lambda: cells)  # as CHARRNN_KERNELS=numpy chooses
    result = invoke(["train", corpus_file, "--out", tmp_path / "run", *RUN, "--precision", "bf16"])
    assert result.exit_code != 0 and "compiled kernels" in result.stderr and "Traceback" not in result.stderr


def test_a_classifier_refuses_bf16():
    with pytest.raises(Exception, match="float32 language models"):
        ModelConfig(vocab_size=10, classes=3, precision="bf16")
    with pytest.raises(Exception, match="precision"):
        ModelConfig(vocab_size=10, precision="fp8")
    assert ModelConfig(vocab_size=10).precision == "float32"


def test_fine_tuning_keeps_the_model_s_precision_unless_given(corpus_file, tmp_path):
    train(corpus_file, tmp_path / "base", "--precision", "bf16")
    for out, extra, want in (("kept", [], "bf16"), ("changed", ["--precision", "float32"], "float32")):
        result = invoke(["train", corpus_file, "--init-from", tmp_path / "base", "--out", tmp_path / out,
                         "--max-steps", "1", "--eval-every", "1", "-q", *extra])
        assert result.exit_code == 0, result.stderr
        assert models.load_checkpoint(tmp_path / out)[1].precision == want


def test_a_fresh_language_model_takes_bf16_where_the_cpu_runs_its_tiles(corpus_file, tmp_path, monkeypatch):
    assert train(corpus_file, tmp_path / "fresh")[1].precision == ("bf16" if bf16.host_has() else "float32")
    assert train(corpus_file, tmp_path / "given", "--precision", "float32")[1].precision == "float32"
    monkeypatch.setenv("CHARRNN_BF16_REFERENCE", "1")  # as on a CPU without AVX512-BF16: bf16 would be slow
    assert train(corpus_file, tmp_path / "reference")[1].precision == "float32"
    monkeypatch.delenv("CHARRNN_BF16_REFERENCE")
    from charrnn.core import cells, model

    monkeypatch.setattr(model, "recurrence", lambda: cells)  # as CHARRNN_KERNELS=numpy chooses: bf16 needs
    assert train(corpus_file, tmp_path / "numpy")[1].precision == "float32"  # the compiled recurrence


def test_a_classifier_left_to_the_defaults_stays_float32(tmp_path):
    corpus = tmp_path / "labelled.txt"
    corpus.write_text("".join(f"{'ab'[i % 2]}\t{'xyz' * (i % 5 + 1)}\n" for i in range(60)))
    result = invoke(["train", corpus, "--task", "classify", "--out", tmp_path / "run", *RUN])
    assert result.exit_code == 0, result.stderr
    assert models.load_checkpoint(tmp_path / "run")[1].precision == "float32"


@pytest.mark.parametrize("options,want", [({}, "bf16"), ({"dtype": "float64"}, "float32"),
                                          ({"precision": "float32"}, "float32")])
def test_the_machine_is_asked_for_the_precision_only_when_it_is_open_and_the_model_float32(options, want):
    asked = []

    def machine():
        asked.append(True)
        return "bf16"
    model_options = {"layers": None, "hidden": None, "embed": None, "dropout": None, "precision": None,
                     "dtype": "float32", **options}
    fill_auto_settings("abc " * 500, None, TrainConfig(max_steps=10), model_options, precision=machine)
    assert model_options["precision"] == want
    assert asked == ([True] if not options else [])
