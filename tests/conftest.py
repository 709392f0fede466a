"""Fixtures shared by the test modules (the plain helpers they are built on are in tiny_runs.py)."""

import os
import sys

# Where PYTHONDONTWRITEBYTECODE is set, every `python -m charrnn` a test starts (a hundred or so)
# compiled charrnn's modules from source again: 0.5 s to import charrnn.cli, against 0.35 s from
# bytecode. The test session writes bytecode as Python does by default, into the __pycache__ folders
# beside the sources (ignored by git; numba keeps its compiled kernels in charrnn's already). (A
# PYTHONPYCACHEPREFIX would keep them elsewhere, but for every package: numpy, numba and torch would
# then be compiled from source again, which cost more than it saved.)
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    sys.dont_write_bytecode = False

import pytest  # noqa: E402  (after the environment the test processes inherit)
from hypothesis import settings  # noqa: E402

from charrnn import model  # noqa: E402
from tiny_runs import NAMES, stream_text  # noqa: E402

# Hypothesis fails an example that runs longer than 200 ms by default: a
# wall-clock assertion, which a busy machine breaks (a line-batch property
# took 274 ms under load). No test here asserts a time.
settings.register_profile("charrnn", deadline=None)
settings.load_profile("charrnn")


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch):
    """Run the test once on the compiled kernels and once on the NumPy reference."""
    monkeypatch.setenv("CHARRNN_KERNELS", request.param)
    model.recurrence.cache_clear()
    yield request.param
    model.recurrence.cache_clear()


@pytest.fixture
def corpus_file(tmp_path):
    """A stream-mode corpus of about 600 characters: tens of TINY steps per epoch."""
    path = tmp_path / "corpus.txt"
    path.write_text(stream_text(120), encoding="utf-8")
    return path


@pytest.fixture
def names_file(tmp_path):
    """A lines-mode corpus: 40 names, one per line."""
    path = tmp_path / "names.txt"
    path.write_text("\n".join(NAMES + [n.capitalize() for n in NAMES[:14]]) + "\n", encoding="utf-8")
    return path
