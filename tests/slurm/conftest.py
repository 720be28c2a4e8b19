import pytest

from tests.slurm.cluster import LocalSlurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    why = cluster.available()
    if why:
        pytest.fail(f"cannot start a local Slurm: {why}")
    cluster.start()
    yield cluster
    cluster.stop()
