"""Launcher detection: one process, torchrun and srun need no code changes."""

import os
import subprocess
import sys

import pytest

from megatron_kd.errors import ConfigError, SetupError
from megatron_kd.runtime import cpu_compat
from megatron_kd.runtime.distributed import detect_launch_env, expand_nodelist


def test_torchrun_env():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1234"}
    e = detect_launch_env(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.launcher) == \
        (3, 8, 1, "n0", 1234, "torchrun")


def test_srun_env_takes_master_from_nodelist():
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08,11],login1", "SLURM_JOB_ID": "4242"}
    e = detect_launch_env(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.launcher) == (9, 16, 1, "gpu07", "srun")
    assert e.master_port == 20000 + 4242  # same on every task of the job, no rendezvous needed
    env["MASTER_PORT"] = "6000"
    assert detect_launch_env(env).master_port == 6000


def test_single_process():
    e = detect_launch_env({})
    assert (e.rank, e.world_size, e.launcher) == (0, 1, "single") and e.master_port > 0


@pytest.mark.parametrize("nodes, hosts", [
    ("node1", ["node1"]),
    ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
    ("a[1,3-4],b2", ["a1", "a3", "a4", "b2"]),
    ("rack1-n[9-10]", ["rack1-n9", "rack1-n10"]),
])
def test_expand_nodelist(nodes, hosts):
    assert expand_nodelist(nodes) == hosts


def test_unsupported_megatron_version_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_compat, "installed_mcore_version", lambda: "0.12.0")
    with pytest.raises(SetupError, match=r"megatron-core 0.12.0 is installed, "
                                         r"but the CPU runtime layer was written for 0.19.2"):
        cpu_compat._check_version()


def test_installed_megatron_version_is_supported():
    assert cpu_compat.installed_mcore_version() in cpu_compat.SUPPORTED_MCORE_VERSIONS


@pytest.mark.parametrize("env, text", [
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "99999"}, "MASTER_PORT='99999' is not an integer in [1, 65535]"),
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' is not an integer >= 0"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[a-c]"}, "is not one Slurm writes"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n1", "MASTER_PORT": "0"},
     "MASTER_PORT='0' is not an integer in [1, 65535]"),
])
def test_malformed_launcher_variables_are_one_line(env, text):
    with pytest.raises(ConfigError) as err:
        detect_launch_env(env)
    assert text in str(err.value) and "\n" not in str(err.value)


def test_lean_megatron_import_leaves_torch_compile_and_wandb_as_they_were():
    """The CPU layer keeps TorchInductor and wandb out of megatron-core's package import (~4 s per
    process) and lifts both right after: torch.compile is torch's again, wandb imports."""
    code = ("import sys, torch; compile_ = torch.compile\n"
            "from megatron_kd.runtime import cpu_compat; assert cpu_compat.activate()\n"
            "from megatron.core import timers\n"
            "assert timers.wandb is None and 'torch._inductor.compile_fx' not in sys.modules\n"
            "assert torch.compile is compile_\n"
            "import wandb; print('ok', wandb.__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and "ok wandb" in r.stdout, r.stderr[-2000:]
