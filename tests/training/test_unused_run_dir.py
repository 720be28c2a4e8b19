"""After a failed launch, the run directory that launch made is removed only when nothing of a
run is in it: what a run writes before its first step goes, a metrics line or a checkpoint
keeps the directory (they explain the failure, or are work to resume)."""

from __future__ import annotations

from megatron_kd.training.run_dir import LOCK_FILE, remove_unused_run_dir


def _startup(d):
    d.mkdir()
    (d / LOCK_FILE).write_text("123\n")
    (d / "config.yaml").write_text("run: {}\n")
    (d / "data_cache").mkdir()
    (d / "data_cache" / "x-train-sample_index.npy").write_bytes(b"\0" * 64)
    (d / "metrics.jsonl").write_text("")
    return d


def test_startup_files_only_are_removed(tmp_path):
    d = _startup(tmp_path / "run")
    assert remove_unused_run_dir(d) and not d.exists()


def test_metrics_checkpoints_or_other_files_keep_the_dir(tmp_path):
    for name, make in (("metrics", lambda d: (d / "metrics.jsonl").write_text('{"step": 1}\n')),
                       ("ckpt", lambda d: (d / "checkpoints" / "step_0000001").mkdir(parents=True)),
                       ("notes", lambda d: (d / "notes.txt").write_text("mine"))):
        d = _startup(tmp_path / name)
        make(d)
        assert not remove_unused_run_dir(d) and (d / LOCK_FILE).exists(), name
    assert not remove_unused_run_dir(tmp_path / "absent")
