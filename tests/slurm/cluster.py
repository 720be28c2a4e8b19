"""A real single-node Slurm (munged + slurmctld + slurmd) on localhost for the tests.

State, spool, logs and pid files live in a private directory; SLURM_CONF points the client
commands at it. Needs root and Debian's slurmctld, slurmd, slurm-client and munge packages
(`make test` installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen (two calls of a
    one-port helper can return the same port, and slurmctld and slurmd must not share one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.procs: list[subprocess.Popen] = []

    @staticmethod
    def missing() -> str | None:
        """What is not installed, if anything (`make system-deps` installs Debian's packages)."""
        for exe in ("slurmctld", "slurmd", "sbatch", "munged", "scontrol"):
            if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists():
                return f"{exe} is not installed"
        return None

    def start(self) -> None:
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        cpus = os.cpu_count() or 2
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text("\n".join([
            "ClusterName=mkdtest", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge", "CredType=cred/munge", "AuthInfo=cred_expire=10",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
            "JobRequeue=1", "SchedulerType=sched/builtin", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            "InactiveLimit=0", "KillWait=10", "MinJobAge=300",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        self.procs.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)],
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        time.sleep(1)
        self.procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(self.conf)],
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if r.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise RuntimeError("local Slurm did not come up: " + (self.root / "log" / "slurmctld.log").read_text()[-2000:])

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    def job_state(self, job_id: str) -> str:
        r = subprocess.run(["scontrol", "show", "job", job_id], env=self.env, capture_output=True, text=True)
        for tok in r.stdout.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return "UNKNOWN"

    def wait(self, job_id: str, timeout: float = 600, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.job_state(job_id)
            if s in states:
                return s
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout}s")
