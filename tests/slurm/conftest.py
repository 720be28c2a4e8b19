import os

import pytest

from tests.slurm.cluster import LocalSlurm


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_local_slurm() -> None:
    """Where no local Slurm can run: in CI (CI=true) the test fails. Elsewhere it is skipped when
    one cannot be had (not root: the packages cannot be installed nor the daemons started), and
    fails as root, where `make system-deps` (run by `make test`) installs the packages."""
    missing, root = LocalSlurm.missing(), os.geteuid() == 0
    if not missing and root:
        return
    why = missing or "it needs root"
    if in_ci():
        pytest.fail(f"CI=true but no local Slurm: {why}", pytrace=False)
    if not root:
        pytest.skip(f"no local Slurm: {why}" + (", and installing it needs root" if missing else ""))
    pytest.fail(f"no local Slurm: {why}; `make system-deps` (run by `make test`) installs it", pytrace=False)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    require_local_slurm()
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()
