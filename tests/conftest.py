"""Shared fixtures: small real data, a synchronous scheduler, a real LocalCluster."""

from __future__ import annotations

import dask
import numpy as np
import pytest


@pytest.fixture(scope="session")
def diabetes():
    """Real data bundled with scikit-learn: (442, 10) standardized features, target."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X, y


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def local_client():
    """A real LocalCluster with two worker processes on loopback."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                      host="127.0.0.1", dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c
