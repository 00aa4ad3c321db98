"""Shared test settings."""

import pytest


@pytest.fixture(autouse=True)
def _single_threaded_integrate(request):
    """Run the integration tests with one BLAS/OpenMP/torch thread.

    Their matrices are tiny (tens of subjects); on a shared 2-core machine a second
    thread per operation only adds contention, which slowed these tests 10-100x.
    """
    if not request.module.__name__.split(".")[-1].startswith("test_integrate"):
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)
