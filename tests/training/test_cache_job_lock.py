"""One teacher-cache job per --out: a second job on a directory whose lock a running job holds
is refused in one line naming the holder's pid (two jobs used to race: ENOTEMPTY, a `.partial`
left behind); the lock file alone does not make the directory "not a cache"."""

from __future__ import annotations

import subprocess
import sys
import time

from megatron_kd.cli.main import main
from tests.checkpoint.test_loading_trust import trained  # noqa: F401  (the fixture: a trained run)
from tests.distributed import REPO
from tests.helpers import ENV

HOLDER = ("import sys, time; from megatron_kd.training.run_dir import lock_run_dir; "
          "lock_run_dir(sys.argv[1], 'mkd teacher-cache', '--out'); print('locked', flush=True); time.sleep(60)")


def test_second_cache_job_on_one_out_is_refused(trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cache"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        rc = main(["teacher-cache", "train/tiny-mock", f"teacher.checkpoint={trained}", "train.steps=2",
                   "train.warmup_steps=0", "--out", str(out), "--top-k", "8"])
        err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert rc == 2 and len(err) == 1, err
        assert f"--out {out} is in use by a running mkd teacher-cache (pid {holder.pid})" in err[0], err
        assert time.monotonic() - t0 < 30
        assert sorted(p.name for p in out.iterdir()) == [".mkd.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
