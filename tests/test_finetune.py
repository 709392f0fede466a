"""Fine-tuning: `charrnn train NEW.txt --init-from RUN_OR_MODEL_FILE` (and --extend-vocab)."""

import json
import math

import numpy as np
import pytest

from charrnn.data import batches
from charrnn.files import checkpoint
from charrnn.core import model, optim
from charrnn.runs import finetune, models, rundir
from charrnn.core.model import ModelConfig
from charrnn.data.vocab import UNK
from tiny_runs import invoke

ARCH = ["--cell", "lstm", "--layers", "1", "--hidden", "12", "--embed", "6"]
RUN = ["--batch-size", "2", "--seq-len", "8", "--log-every", "1"]
OLD_TEXT = "the cat sat on the mat and the rat ran at the cat\n" * 8
NEW_TEXT = "a zebra quizzed the jackal; the cat sat on the mat\n" * 6


@pytest.fixture
def base(tmp_path):
    (tmp_path / "old.txt").write_text(OLD_TEXT)
    (tmp_path / "new.txt").write_text(NEW_TEXT)
    code, _, err = invoke(["train", tmp_path / "old.txt", *ARCH, *RUN, "--max-steps", "4", "--out", tmp_path / "base"])
    assert code == 0, err
    return tmp_path


def load(path):
    return models.load_checkpoint(str(path))


def test_keeping_the_vocabulary_starts_from_the_models_weights_and_turns_unseen_characters_into_unk(base):
    params, config, vocab, _, model_file = load(base / "base")
    code, _, err = invoke(["train", base / "new.txt", "--init-from", base / "base", *RUN, "--max-steps", "1",
                           "--out", base / "ft"])
    assert code == 0, err
    unseen = sorted(set(NEW_TEXT) - set(OLD_TEXT))
    n_unk = sum(NEW_TEXT.count(c) for c in unseen)
    assert f"vocabulary kept ({vocab.size} tokens); {n_unk:,} tokens of the new text become UNK, " \
           f"{len(unseen)} characters the model never saw: {' '.join(map(repr, unseen))}" in err
    _, ft_config, ft_vocab, meta, _ = load(base / "ft")
    assert ft_vocab == vocab and ft_config == config  # the architecture and every id as they were
    ids = np.concatenate([np.load(base / "ft" / "data" / f"{s}.npy") for s in ("train", "val")])
    np.testing.assert_array_equal(ids, vocab.encode(NEW_TEXT))  # the model's own ids, UNK for the rest
    assert np.count_nonzero(ids == UNK) == n_unk
    assert meta["origin"]["model_file"] == str(model_file) and meta["origin"]["vocab"] == "kept"


def test_the_first_step_is_a_fresh_optimizer_step_from_the_models_weights(base):
    """One step of the fine-tuned run equals one step computed here: the base weights, the new text's first
    batch, and an Adagrad with no history (a resumed optimizer would divide by the old squared gradients)."""
    params, config, vocab, _, _ = load(base / "base")
    code, _, err = invoke(["train", base / "new.txt", "--init-from", base / "base", *RUN, "--max-steps", "1",
                           "--schedule", "constant", "--warmup", "0", "--lr", "0.05", "--dropout", "0", "--clip", "0",
                           "--out", base / "ft"])
    assert code == 0, err
    train_ids = np.load(base / "ft" / "data" / "train.npy")
    x, y = batches.stream_batch(train_ids, 2, 8, 0)
    weights = {k: np.array(v) for k, v in params.items()}
    _, _, cache = model.forward(weights, config, x, y)
    grads, _ = model.backward(weights, config, cache)
    expected = {}
    for name, p in params.items():
        g = grads[name].astype(np.float64)
        expected[name] = p - 0.05 * g / np.sqrt(g * g + 1e-8)
    got, _, _ = checkpoint.load_model(str(base / "ft" / "model.safetensors"))
    for name in params:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    log = [json.loads(line) for line in open(base / "ft" / "log.jsonl")]
    assert [r["step"] for r in log] == [1]  # budgets count the new run, from step 0
    base_steps = json.loads(open(base / "base" / "log.jsonl").readlines()[-1])["step"]
    assert base_steps == 4


def test_extend_vocab_appends_new_tokens_with_fresh_rows_and_keeps_every_old_id(base):
    params, config, vocab, _, _ = load(base / "base")
    code, _, err = invoke(["train", base / "new.txt", "--init-from", base / "base", "--extend-vocab", *RUN,
                           "--max-steps", "1", "--seed", "7", "--out", base / "ft"])
    assert code == 0, err
    unseen = sorted(set(NEW_TEXT) - set(OLD_TEXT))
    V = vocab.size
    assert f"vocabulary extended from {V} to {V + len(unseen)} tokens: {len(unseen)} new " \
           f"(ids {V}-{V + len(unseen) - 1})" in err
    run = rundir.resume_run(str(base / "ft"))
    assert run.vocab.tokens == vocab.tokens + tuple(unseen)
    ids = np.concatenate([run.train_ids, run.val_ids])
    assert not np.any(ids == UNK)
    np.testing.assert_array_equal(run.vocab.encode(OLD_TEXT), vocab.encode(OLD_TEXT))  # old ids unchanged
    # the weights before the step: the model's rows, then a fresh model's rows for the new ids
    init = finetune.InitFrom(params, config, vocab, {}, "m", extend=True)
    fresh = model.init_params(ModelConfig(**{**config.to_dict(), "vocab_size": V + len(unseen)}),
                              np.random.default_rng(7))
    start = finetune.inherit_params(init, fresh)
    for name in ("embedding.weight", "head.weight", "head.bias"):
        np.testing.assert_array_equal(start[name][:V], params[name])
        np.testing.assert_array_equal(start[name][V:], fresh[name][V:])
    np.testing.assert_array_equal(start["rnn.weight_hh_l0"], params["rnn.weight_hh_l0"])


def test_info_shows_where_a_run_was_initialised_from_even_after_a_resume(base):
    code, _, err = invoke(["train", base / "new.txt", "--init-from", base / "base" / "model.safetensors", *RUN,
                           "--max-steps", "1", "--out", base / "ft"])
    assert code == 0, err
    code, _, err = invoke(["train", "--resume", base / "ft", "--max-steps", "2"])
    assert code == 0, err
    code, out, _ = invoke(["info", base / "ft"])
    assert code == 0
    (row,) = [line for line in out.splitlines() if line.startswith("initialised from")]
    assert str(base / "base" / "model.safetensors") in row and "(step 4)" in row and "vocabulary kept" in row
    code, out, _ = invoke(["info", base / "base"])
    assert "initialised from" not in out


@pytest.mark.parametrize("args, message", [
    (["--hidden", "32"], "--hidden 32 conflicts with the model of --init-from, which has hidden 12"),
    (["--cell", "gru"], "--cell gru conflicts with the model of --init-from, which has cell lstm"),
    (["--dtype", "float64"], "--dtype float64 conflicts"),
    (["--level", "word"], "--level word conflicts with the model of --init-from, which has a char-level"),
    (["--max-vocab", "5"], "--max-vocab cannot be given with --init-from"),
])
def test_options_that_contradict_the_model_are_one_line_errors(base, args, message):
    code, out, err = invoke(["train", base / "new.txt", "--init-from", base / "base", *args, "--out", base / "ft"])
    assert code == 2 and out == ""  # options that cannot go together: a usage error
    assert out == "" and err.count("\n") == 1 and err.startswith("Error: ")
    assert message in err, err
    assert not (base / "ft").exists()


def test_matching_architecture_options_are_accepted(base):
    code, _, err = invoke(["train", base / "new.txt", "--init-from", base / "base", "--hidden", "12", "--cell", "lstm",
                           *RUN, "--max-steps", "1", "--out", base / "ft"])
    assert code == 0, err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"])
def test_init_from_a_corrupt_or_missing_file_is_a_one_line_error(base, content):
    bad = base / "bad.safetensors"
    bad.write_bytes(content)
    code, out, err = invoke(["train", base / "new.txt", "--init-from", bad, "--out", base / "ft"])
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("Error: "), err
    assert not (base / "ft").exists()
    # a path that does not exist is a usage error (exit 2), as every path named on the command line is
    code, out, err = invoke(["train", base / "new.txt", "--init-from", base / "missing.safetensors", "--out", base / "ft"])
    assert code == 2 and out == "" and "does not exist" in err and "missing.safetensors" in err, err
    assert not (base / "ft").exists()


def test_extend_vocab_needs_init_from(base):
    code, _, err = invoke(["train", base / "new.txt", "--extend-vocab", "--max-steps", "1"])
    assert code == 2 and "--extend-vocab extends the vocabulary of the model given by --init-from" in err


def test_init_from_cannot_be_given_with_resume(base):
    code, _, err = invoke(["train", "--resume", base / "base", "--init-from", base / "base"])
    assert code == 2 and "--init-from cannot be given with --resume" in err
