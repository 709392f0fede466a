"""Fixtures shared by the test modules."""

import pytest

from charrnn import model


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch):
    """Run the test once on the compiled kernels and once on the NumPy reference."""
    monkeypatch.setenv("CHARRNN_KERNELS", request.param)
    model.recurrence.cache_clear()
    yield request.param
    model.recurrence.cache_clear()
