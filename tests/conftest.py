import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared: keep torch to one thread and tests deterministic."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
