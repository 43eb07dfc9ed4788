"""Fixtures shared by the runtime tests."""

import pytest

from deepzip.runtime import permute


@pytest.fixture(params=["register-permute", "other layouts"])
def batch_one_layouts(request, monkeypatch):
    """Run the test once with the register-permute batch-1 layout allowed (skipped on a CPU
    without AVX-512F) and once with it off, so both batch-1 paths meet the same checks."""
    if request.param == "register-permute" and not permute.host_supports():
        pytest.skip("the register-permute layout needs AVX-512F")
    monkeypatch.setattr(permute, "_HOST", request.param == "register-permute")


@pytest.fixture
def no_permute(monkeypatch):
    """The register-permute layout off: for tests of the layouts it would otherwise replace."""
    monkeypatch.setattr(permute, "_HOST", False)
