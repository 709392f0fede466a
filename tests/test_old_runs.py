"""Run directories written by an earlier version (tests/old_runs, see its README) still sample, evaluate,
classify and resume, with the numbers that version gave."""

import json
import shutil
from pathlib import Path

import pytest

from charrnn.core import model
from tiny_runs import invoke, read_log

OLD = Path(__file__).resolve().parent / "old_runs"
EXPECTED = json.loads((OLD / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture
def old(tmp_path, monkeypatch):
    """A copy of an old run directory (the originals are never written)."""
    monkeypatch.setenv("CHARRNN_KERNELS", "numpy")  # as they were made; the kernels agree with it (test_kernels)
    model.recurrence.cache_clear()  # the choice is made once per process: make it again, and again after

    def copy(name):
        shutil.copytree(OLD / name, tmp_path / name)
        return str(tmp_path / name)
    yield copy
    model.recurrence.cache_clear()


def close(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("name, options", [
    ("lm-stream", ["--length", "60", "--temp", "0.8"]),
    ("lm-lines", ["-n", "3", "--temp", "0.8"]),
])
def test_an_old_language_model_samples_as_it_did(old, name, options):
    code, out, err = invoke(["sample", "-c", old(name), "--seed", "5", *options])
    assert code == 0, err
    assert out == EXPECTED[name]["sample"]


@pytest.mark.parametrize("name", ["lm-stream", "lm-lines", "classifier"])
def test_an_old_run_evaluates_as_it_did(old, name):
    code, out, err = invoke(["eval", "-c", old(name), "--json"])
    assert code == 0, err
    close(json.loads(out), EXPECTED[name]["eval"])


def test_an_old_classifier_classifies_as_it_did(old):
    code, out, err = invoke(["classify", "-", "-c", old("classifier")], input="the cat runs\nmy dog\n")
    assert code == 0, err
    assert out == EXPECTED["classifier"]["classify"]


@pytest.mark.parametrize("name", ["lm-stream", "lm-lines", "classifier"])
def test_an_old_run_resumes_as_it_did(old, name):
    run = old(name)
    code, out, err = invoke(["train", "--resume", run, "--max-steps", "30"])
    assert code == 0, err
    resumed = [{k: r[k] for k in ("step", "loss", "val_loss") if k in r} for r in read_log(run) if r["step"] > 20]
    assert len(resumed) == len(EXPECTED[name]["resumed"])
    for got, want in zip(resumed, EXPECTED[name]["resumed"]):
        close(got, want)
