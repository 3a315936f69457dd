"""Test-wide settings and fixtures. Hypothesis draws the same examples on every run
(deterministic CI); shared helpers are in ``helpers.py``, the tables in ``configs.py``."""

import pytest
import torch
from hypothesis import settings

settings.register_profile("alice", derandomize=True, database=None, deadline=None)
settings.load_profile("alice")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    (CI shares it) a second thread can make each pass many times slower. A module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
