"""Shipped sbatch scripts are valid bash and launch through srun, not torchrun."""

import subprocess
from pathlib import Path

SLURM = Path(__file__).resolve().parents[1] / "slurm"


def test_sbatch_scripts_parse_and_use_srun():
    scripts = sorted(SLURM.glob("*.sbatch"))
    assert scripts
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text()
        commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert any(line.startswith("srun ") for line in commands)
        assert not any("torchrun" in line for line in commands)
        assert "python -m megatron_kd" in text
