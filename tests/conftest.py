import pytest

import support
from wsrelay import pump as pump_selector


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures: support.debian_binary refuses a test not marked ``system``."""
    support.current_test_is_system = item.get_closest_marker("system") is not None


@pytest.fixture(params=["cython", "python"])
def pump(request):
    """Every relay test runs against both pump implementations."""
    if request.param == "cython":
        try:
            pump_selector.load("cython")
        except ImportError as exc:  # the suite must say so loudly, not skip silently
            pytest.fail(f"compiled pump missing: {exc}")
    return request.param
