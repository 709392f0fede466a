"""Fixtures shared by the test modules (the plain helpers they are built on are in tiny_runs.py)."""

import atexit
import os
import shutil
import sys
import tempfile

# Where PYTHONDONTWRITEBYTECODE is set, every `python -m charrnn` a test starts (a hundred or so)
# compiled charrnn's modules from source again: 0.5 s to import charrnn.cli, against 0.35 s from
# bytecode. This session's processes share bytecode in a temporary folder instead, removed at exit,
# so nothing is written beside the sources, as the variable asks.
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    _pycache = tempfile.mkdtemp(prefix="charrnn-tests-pycache-")
    atexit.register(shutil.rmtree, _pycache, ignore_errors=True)
    os.environ["PYTHONPYCACHEPREFIX"] = _pycache
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    sys.pycache_prefix, sys.dont_write_bytecode = _pycache, False

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
