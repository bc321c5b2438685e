import pytest

from wsrelay import pump as pump_selector


@pytest.fixture(params=["cython", "python"])
def pump(request):
    """Every relay test runs against both pump implementations."""
    if request.param == "cython":
        try:
            pump_selector.load("cython")
        except ImportError as exc:  # the suite must say so loudly, not skip silently
            pytest.fail(f"compiled pump missing: {exc}")
    return request.param
