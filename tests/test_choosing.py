"""Which checkpoint a command uses, and how it is named: one rule for the CLI and for Python
(a run directory means its best.safetensors), a stderr line saying which file sample, eval and
annotate used, and
-c/--checkpoint on every command that reads a model."""

import importlib.util
import os

import numpy as np
import pytest

from charrnn.files import checkpoint, layout
from charrnn.core import model
from charrnn.runs import models
from tiny_runs import invoke, make_run

CHARS = "abcdefgh \n"
TEXT = "abc def gha bed cafe\n" * 40


def with_best(directory, seed):
    """Give the run made by make_run a best.safetensors holding other weights (seed); returns them."""
    params, config, meta = checkpoint.load_model(os.path.join(directory, layout.MODEL_FILE))
    best = model.init_params(config, np.random.default_rng(seed))
    meta = {k: v for k, v in meta.items() if k not in ("kind", "model", *checkpoint.RESERVED_META)}
    meta["training"] = {"step": 40, "epoch": 1.0, "elapsed": 1.0, "best_val_loss": 1.90412, "optimizer": "adagrad",
                        "lr": 0.1}
    checkpoint.save_model(os.path.join(directory, layout.BEST_FILE), best, config, meta)
    return best


@pytest.fixture
def run_dir(tmp_path):
    latest, _, _, _ = make_run(tmp_path / "checkpoints" / "names", CHARS, val_text=TEXT)
    best = with_best(tmp_path / "checkpoints" / "names", seed=7)
    assert any(not np.array_equal(latest[k], best[k]) for k in best)
    return tmp_path / "checkpoints" / "names", best


def test_python_load_model_of_a_run_directory_is_the_best_file_as_in_the_cli(run_dir):
    directory, best = run_dir
    from_python, _, _ = checkpoint.load_model(directory)
    from_cli, _, _, _, model_file = models.load_checkpoint(str(directory))
    assert model_file == os.path.join(str(directory), layout.BEST_FILE)
    for name, value in best.items():
        assert np.array_equal(from_python[name], value) and np.array_equal(from_cli[name], value), name
    # without a best file, both fall back to the latest weights
    os.unlink(directory / layout.BEST_FILE)
    latest, _, _ = checkpoint.load_model(directory / layout.MODEL_FILE)
    again, _, _ = checkpoint.load_model(directory)
    assert all(np.array_equal(again[k], latest[k]) for k in latest)


def test_sample_and_eval_name_the_checkpoint_they_use_on_stderr(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the newest run under checkpoints/, chosen silently before
    expected = f"using {os.path.join('checkpoints', 'names', 'best.safetensors')} (step 40, val 1.904)\n"
    code, out, err = invoke(["sample", "--length", 20, "--seed", 0])
    assert code == 0 and out and err == expected
    code, out, err = invoke(["eval", "--json"])
    assert code == 0 and out.startswith("{") and err == expected
    # a latest-weights file says the run's best so far, not a validation loss of its own
    code, _, err = invoke(["eval", "-c", os.path.join("checkpoints", "names", "model.safetensors")])
    assert code == 0 and err == f"using {os.path.join('checkpoints', 'names', 'model.safetensors')}\n"
    (tmp_path / "t.txt").write_text("abc bad cafe\n")
    code, out, err = invoke(["annotate", "t.txt", "--json"])
    assert code == 0 and out.startswith("{") and err == expected
    for command in (["sample", "--length", 5], ["eval"], ["annotate", "t.txt", "--json"]):
        for quiet in ("-q", "--quiet"):
            code, out, err = invoke(command + [quiet])
            assert code == 0 and out and err == ""


def test_every_command_that_reads_a_model_takes_dash_c(run_dir, tmp_path):
    directory, _ = run_dir
    (directory / layout.LOG_FILE).write_text('{"step": 10, "loss": 2.0, "val_loss": 2.1}\n')
    positional = invoke(["info", directory])
    for flag in ("-c", "--checkpoint"):
        assert invoke(["info", flag, directory]) == positional
    assert positional[0] == 0 and "best.safetensors" in positional[1]
    assert invoke(["info", directory, "-c", directory]) == positional  # the same one twice is fine
    code, _, err = invoke(["info", directory, "-c", directory / layout.MODEL_FILE])
    assert code == 2 and "not both" in err

    out_png = tmp_path / "curves.png"
    for args in (["plot", directory], ["plot", "-c", directory], ["plot", "-c", directory / layout.BEST_FILE]):
        code, _, err = invoke(args + ["--out", out_png])
        if importlib.util.find_spec("matplotlib") is None:
            # it found the run's log, then stopped at the missing library, naming the package to install
            assert code == 1 and err == "Error: charrnn plot needs matplotlib: pip install matplotlib\n"
        else:
            assert code == 0 and out_png.exists(), err
            out_png.unlink()
    for command in ("info", "plot", "sample", "eval", "annotate"):
        code, out, err = invoke([command, "-c", tmp_path / "nowhere"])
        assert code == 2 and out == "" and "does not exist" in err, (command, err)
