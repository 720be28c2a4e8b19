"""Every string that reaches a generated sbatch script, set to hostile values: newlines are
refused before anything is written; quotes, $(), backticks and semicolons stay data — the
script parses (`bash -n`), and running its preamble creates nothing outside a sandbox."""

import subprocess
from pathlib import Path

import pytest

from megatron_kd.errors import ConfigError
from megatron_kd.slurm.submit import JobSpec, render


def _payloads(marker: Path) -> list[str]:
    m = str(marker)
    return [f"$(touch {m})", f"`touch {m}`", f"'; touch {m}; '", f'"; touch {m}; "', f"x; touch {m} #",
            f"${{IFS}}touch${{IFS}}{m}", "\\", "%j %x"]


def _run_preamble(script: str, sandbox: Path) -> None:
    """The script up to its srun line (the job's set-up: comments, cd, exports), run by bash in
    `sandbox` with the repository's cd replaced by the sandbox."""
    lines = []
    for line in script.splitlines():
        if line.startswith("srun "):
            break
        lines.append(f"cd {sandbox}" if line.startswith("cd ") else line)
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1", "HOME": str(sandbox)}
    subprocess.run(["bash", "-c", "\n".join(lines)], cwd=sandbox, env=env, check=True, capture_output=True)


@pytest.mark.parametrize("field", ["run.dir", "run.name", "job_name", "partition", "account", "time",
                                   "recipe_dir"])
def test_hostile_strings_stay_data(field, tmp_path):
    marker = tmp_path / "pwned"
    sandbox = tmp_path / "sandbox"
    for i, payload in enumerate(_payloads(marker)):
        sandbox.mkdir(exist_ok=True)
        spec = JobSpec(recipe="train/tiny-mock", overrides=[f"run.dir={tmp_path / 'runs' / 'r'}"],
                       gpus_per_node=0, ntasks_per_node=1)
        if field in ("run.dir", "run.name"):
            value = str(tmp_path / "runs" / payload) if field == "run.dir" else payload
            spec.overrides.append(f"{field}={value!r}")  # YAML single-quoted: the payload as is
        elif field == "recipe_dir":
            d = tmp_path / f"recipes-{i}{payload.replace('/', '_')}"
            d.mkdir()
            (d / "r.yaml").write_text("base: train/tiny-mock\n")
            spec.recipe = str(d / "r.yaml")
        else:
            setattr(spec, field, payload)
        if field == "time":  # a time limit has a format: a payload is refused before anything renders
            with pytest.raises(ConfigError, match="is not a Slurm time limit"):
                render(spec)
            continue
        script, _ = render(spec)
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        _run_preamble(script, sandbox)
        assert not marker.exists(), (field, payload)
        made = {p.name for p in tmp_path.iterdir()} - {"sandbox"} - {p.name for p in tmp_path.glob("recipes-*")}
        assert not made and not any(sandbox.iterdir()), (field, payload, made)


@pytest.mark.parametrize("field", ["run.dir", "run.name", "job_name", "partition", "account", "time"])
def test_newlines_and_control_characters_are_refused(field, tmp_path):
    for payload in ("x\ntouch /tmp/pwned #", "x\rtouch", "x\x00y", "x\x1b[2J"):
        spec = JobSpec(recipe="train/tiny-mock", gpus_per_node=0, ntasks_per_node=1,
                       overrides=[f"run.dir={tmp_path / 'r'}"])
        if field in ("run.dir", "run.name"):
            value = str(tmp_path / payload) if field == "run.dir" else payload
            spec.overrides.append(f"{field}={value!r}".replace("\\n", "\n"))
            spec.overrides[-1] = f'{field}="{value.encode("unicode_escape").decode()}"'  # YAML escapes
        else:
            setattr(spec, field, payload)
        with pytest.raises(ConfigError, match="control character"):
            render(spec)
    assert not any(tmp_path.iterdir())
