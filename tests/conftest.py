"""Fixtures shared by the test modules (the plain helpers they are built on are in tiny_runs.py)."""

import os
import sys
import warnings

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

from charrnn.core import cells, model  # noqa: E402
from tiny_runs import NAMES, REQUIRE_KERNELS, stream_text, without_kernels  # noqa: E402

# Hypothesis fails an example that runs longer than 200 ms by default: a
# wall-clock assertion, which a busy machine breaks (a line-batch property
# took 274 ms under load). No test here asserts a time.
settings.register_profile("charrnn", deadline=None)
settings.load_profile("charrnn")


def pytest_configure(config):
    """Where CI requires a fast path or a tool (CHARRNN_REQUIRE_KERNELS, CHARRNN_REQUIRE_BROWSER), its absence
    stops the run at once: a compiled kernel that cannot load, or a browser that is missing, would otherwise
    show up only as tests skipped (or as the NumPy reference standing in for the kernels)."""
    if REQUIRE_KERNELS:
        try:
            from charrnn.core import gemm, kernels  # noqa: F401  (numba, llvmlite and the kernels must load)
        except Exception as exc:  # any failure to load is the finding
            raise pytest.UsageError(f"CHARRNN_REQUIRE_KERNELS is set but the compiled kernels do not load: {exc!r}")
        if not gemm.available():
            raise pytest.UsageError(f"CHARRNN_REQUIRE_KERNELS is set but gemm.py's microkernel is not available "
                                    f"here: {gemm.unavailable_reason()}")
    if os.environ.get("CHARRNN_REQUIRE_BROWSER"):
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as exc:
            raise pytest.UsageError(f"CHARRNN_REQUIRE_BROWSER is set but playwright does not import: {exc}")
        if not os.path.exists("/usr/bin/chromium"):
            raise pytest.UsageError("CHARRNN_REQUIRE_BROWSER is set but /usr/bin/chromium is not installed")


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch):
    """Run the test once on the compiled kernels and once on the NumPy reference. The numba case checks
    that the kernels really run: where numba does not load, it skips (fails under CHARRNN_REQUIRE_KERNELS)
    instead of running the reference a second time."""
    monkeypatch.setenv("CHARRNN_KERNELS", request.param)
    model.recurrence.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = model.recurrence()
    if request.param == "numba" and chosen is cells:
        without_kernels(f"the compiled kernels do not load: {'; '.join(str(w.message) for w in caught)}")
    assert chosen.__name__ == {"numba": "charrnn.core.kernels", "numpy": "charrnn.core.cells"}[request.param]
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
