"""The teacher-signal cache through the CLI: KD from the cache equals online KD (a full cache
written at TP=2 and streamed to a TP=1 student started before its cache job; a top-K cache with
kd.top_k and the other bucket, read at another batch shape, over DP and across a resume), a
killed cache job restarts to the same bytes, a sweep's KD points share one teacher pass, and bad
caches are one line before anything starts. What each cache encoding gives the objective, at
TP=1 and TP=2, is tests/distill/test_routes.py's (one float64 reference, in-process)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ENV, MKD, REPO, env_with, mkd, mkd_in_process, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

RUN = ["logging.tensorboard=false", "checkpoint.save_at_end=false", "train.lr=3e-3"]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


def _close(a, b, what):
    assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (what, a, b)


@pytest.fixture(scope="module")
def teacher(mock_teacher):
    return mock_teacher


def test_full_cache_written_at_tp2_streams_to_a_tp1_student_as_online(teacher, tmp_path, capsys):
    """The student starts first and waits (teacher.cache_wait_s); once it says so, the cache job
    starts beside it with the teacher at TP=2 (4 shards, a window of 3: at most 3 on disk, the
    ones the student checkpointed past deleted); the student, at TP=1, reads them as they come
    and trains as the online run does, teacher metrics included. (A complete cache read after
    its job: the top-K test below and the sweep test; the student at TP=2 from a cache:
    tests/distill/test_routes.py, every encoding at TP=1 and 2.)"""
    kd = [*RUN, "train.steps=4", f"teacher.checkpoint={teacher}", "kd.alpha=0.5", "kd.temperature=2.0"]
    mkd("train", "train/tiny-mock", *kd, f"run.dir={tmp_path / 'online'}", timeout=600)
    ref = _losses(tmp_path / "online")
    assert len(ref) == 4
    streamed = tmp_path / "cache-streamed"
    student = subprocess.Popen([*MKD, "train", "train/tiny-mock", *kd, f"teacher.cache={streamed}",
                                "teacher.cache_wait_s=240", "checkpoint.save_interval=1",
                                f"run.dir={tmp_path / 'streamed'}"],
                               cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in student.stdout:  # the student is waiting for the manifest before the job exists
        said.append(line)
        if "teacher.cache_wait_s" in line:
            break
    if "waiting up to 240s" not in "".join(said):
        student.kill()
        pytest.fail("".join(said)[-3000:])
    r = mkd("teacher-cache", "train/tiny-mock", *kd, "parallel.tp=2", "--nproc", 2, "--out", streamed,
            "--top-k", "all", "--shard-rows", 4, "--window", 3, "--readers", 1, "--reader-wait", 300, timeout=600)
    said += student.stdout.readlines()
    assert student.wait(timeout=600) == 0, "".join(said)[-3000:]
    assert "the teacher ran over the whole stream" in r.stdout, r.stdout
    assert "4 shards (at most 3 on disk at once, window 3)" in r.stdout, r.stdout
    assert "distilling from the teacher cache" in "".join(said)  # no teacher model built
    _close(_losses(tmp_path / "streamed"), ref, "a streamed cache, read while it was written")
    online, cached = read_metrics(tmp_path / "online"), read_metrics(tmp_path / "streamed")
    for key in ("teacher_lm_loss", "teacher_entropy", "top1_agreement", "kd_loss"):
        _close([r[key] for r in cached], [r[key] for r in online], key)
    assert not (streamed / "shard_000000").exists()
    rc, out, err = mkd_in_process(capsys, "teacher-cache", "--verify", streamed)
    assert rc == 0 and "shards deleted by its window of 3" in out, out + err


TOP8 = [*RUN, "train.steps=4", "kd.top_k=4"]


@pytest.fixture(scope="module")
def top8_cache(teacher, tmp_path_factory):
    """A complete top-8 cache in 4 shards of 4 samples (the recipe's 4 steps of 4)."""
    cache = tmp_path_factory.mktemp("top8") / "cache"
    mkd("teacher-cache", "train/tiny-mock", *TOP8, f"teacher.checkpoint={teacher}", "--out", cache, "--top-k", 8,
        "--shard-rows", 4, timeout=600)
    return cache


def test_top_k_cache_serves_other_batches_dp_and_resume(teacher, top8_cache, tmp_path, capsys):
    """The top-8 cache (written at 4 steps of 4 samples) read with kd.top_k=4 (k' < K) and the
    other bucket at another batch shape (8 steps of 2, 1 a micro-batch) over DP=2, stopped after 4
    steps and resumed in one process: the online run's losses. A compact and a sampled cache of
    the same teacher: what the command line writes and what a run reading them is given."""
    kd = [*RUN, f"teacher.checkpoint={teacher}", "kd.alpha=0.7", "kd.top_k=4", "kd.other_bucket=true"]
    shape = ["train.steps=8", "train.global_batch_size=2", "train.micro_batch_size=1"]
    online = tmp_path / "online-dp"
    mkd("train", "train/tiny-mock", *kd, *shape, f"run.dir={online}", "--nproc", 2, timeout=600)
    cached = tmp_path / "cached"
    from_cache = [*kd, *shape, f"teacher.cache={top8_cache}", f"run.dir={cached}", "checkpoint.save_at_end=true"]
    mkd("train", "train/tiny-mock", *from_cache, "train.stop_at_step=4", "--nproc", 2, timeout=600)
    r = mkd("train", "train/tiny-mock", *from_cache, timeout=600)
    assert "resumed from" in r.stdout + r.stderr
    _close(_losses(cached), _losses(online), "top-k + other bucket, dp2, other batch shape, stopped and resumed")
    # a compact cache (bf16 values, 8-bit ids, zstd): under half the fp32 cache's bytes
    compact = tmp_path / "cache-8-bf16"
    r = mkd("teacher-cache", "train/tiny-mock", *TOP8, f"teacher.checkpoint={teacher}", "--out", compact,
            "--top-k", 8, "--shard-rows", 4, "--dtype", "bf16", "--zstd", 3, timeout=600)
    assert "(bf16 values, 8-bit ids, zstd 3)" in r.stdout
    assert sum(f.stat().st_size for f in compact.rglob("*.zst")) < 0.5 * sum(
        f.stat().st_size for f in top8_cache.rglob("*.npy"))
    # (what a bf16 cache's rows give the objective: tests/distill/test_routes.py)
    # random-sampling KD: 16 draws per token (fp16), read by the sparse objective, refused with top_k
    sampled = tmp_path / "cache-sampled"
    r = mkd("teacher-cache", "train/tiny-mock", *TOP8, f"teacher.checkpoint={teacher}", "--out", sampled,
            "--sample", 16, "--dtype", "fp16", timeout=600)
    assert "top-k 16 sampled (fp16 values, 8-bit ids, 5-bit counts of 16 draws)" in r.stdout
    assert list(sampled.rglob("counts.npy")) and not list(sampled.rglob("logp.npy"))  # counts, not values
    rc, _, err = mkd_in_process(capsys, "train", "train/tiny-mock", *kd, *shape, f"teacher.cache={sampled}",
                                f"run.dir={tmp_path / 'sampled-topk'}")  # refused before any rank starts
    assert rc == 2 and "set kd.top_k=null" in err and not (tmp_path / "sampled-topk").exists(), err
    full_kd = [*RUN, f"teacher.checkpoint={teacher}", "kd.alpha=0.7", *shape]
    mkd("train", "train/tiny-mock", *full_kd, f"teacher.cache={sampled}", f"run.dir={tmp_path / 'sampled'}",
        timeout=600)
    got, want = read_metrics(tmp_path / "sampled"), read_metrics(online)
    # the same initial CE and teacher metrics as the online run (its KD term is another estimate of
    # full KD: what the sampled rows give the objective is tests/distill/test_routes.py's)
    assert len(got) == 8 and abs(got[0]["lm_loss"] - want[0]["lm_loss"]) < 1e-5
    assert abs(got[0]["teacher_lm_loss"] - want[0]["teacher_lm_loss"]) < 1e-3
    # (the sparse objective under TP: tests/distill/test_routes.py at TP=2)


def test_killed_cache_job_restarts_to_the_same_bytes(teacher, top8_cache, tmp_path):
    kd = [*TOP8, f"teacher.checkpoint={teacher}"]
    ref, cut = top8_cache, tmp_path / "cut"
    r = mkd("teacher-cache", "train/tiny-mock", *kd, "--out", cut, "--top-k", 8, "--shard-rows", 4,
            env=env_with(MKD_INJECT_KILL_CACHE_SHARD="1"), check=False, timeout=600)
    assert r.returncode != 0 and not (cut / "COMPLETE").exists() and (cut / "shard_000001").is_dir()
    assert not (cut / "shard_000002").exists()
    mkd("teacher-cache", "train/tiny-mock", *kd, "--out", cut, "--top-k", 8, "--shard-rows", 4, timeout=600)
    shards = sorted(p.name for p in ref.glob("shard_*"))
    assert shards == sorted(p.name for p in cut.glob("shard_*")) and len(shards) == 4
    for s in shards:
        for f in sorted((ref / s).iterdir()):
            assert f.read_bytes() == (cut / s / f.name).read_bytes(), (s, f.name)


def test_bad_caches_are_one_line_before_start(teacher, top8_cache, tmp_path, capsys):
    kd = [*TOP8, f"teacher.checkpoint={teacher}"]
    cache = top8_cache
    rc, out, err = mkd_in_process(capsys, "teacher-cache", "--verify", cache)
    assert rc == 0 and "all verified" in out and "deleted" not in out, out + err

    def refused(*extra, text):
        run = tmp_path / "run"
        rc, _, err = mkd_in_process(capsys, "train", "train/tiny-mock", *kd, f"teacher.cache={cache}",
                                    f"run.dir={run}", *extra)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert rc == 2 and len(errors) == 1 and text in errors[0], (extra, err[-2000:])
        assert "Traceback" not in err and not run.exists()

    refused("data.seed=99", text="data_seed differ")
    refused("train.seq_length=16", text="seq_length differ")
    refused("train.steps=8", text="covers 16 samples but this run trains on 32")
    refused("kd.kind=reverse_kl", "kd.top_k=null", text="needs the teacher's whole distribution")
    refused("kd.top_k=null", text="kd.top_k <= 8")
    refused("kd.temperature=2", text="must stay 1")
    refused("kd.fused_output_layer=true", text="kd.fused_output_layer")
    damaged = tmp_path / "damaged"
    shutil.copytree(cache, damaged)
    shard = damaged / "shard_000001" / "logp.npy"
    shard.write_bytes(shard.read_bytes()[:-7])
    cache_good, cache = cache, damaged
    refused(text="shard_000001 is missing or truncated")
    shutil.rmtree(damaged / "shard_000001")
    refused(text="shard_000001 is missing")
    cache = cache_good
    flipped = tmp_path / "flipped"
    shutil.copytree(cache, flipped)
    f = flipped / "shard_000000" / "logp.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    rc, _, err = mkd_in_process(capsys, "teacher-cache", "--verify", flipped)
    assert rc == 2 and "does not match its checksum" in err.strip().splitlines()[-1]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["fingerprint"]["top_k"] == 8 and manifest["num_samples"] == 16
    # a cache job into a directory holding a cache of another run refuses to touch it
    rc, _, err = mkd_in_process(capsys, "teacher-cache", "train/tiny-mock", *kd, "data.seed=3", "--out", cache,
                                "--top-k", 8)
    assert rc == 2 and "holds a teacher cache of another run" in err
    assert json.loads((cache / "manifest.json").read_text()) == manifest
    assert Path(cache / "COMPLETE").is_file()


def test_sweep_with_a_cached_teacher_runs_the_teacher_once(teacher, tmp_path, capsys):
    """One KD point at two seeds and the baseline at both: the two KD runs read one teacher pass,
    the report pairs each run with its seed's baseline, and a second launch runs nothing."""
    import yaml

    sweep = {"name": "cached", "base": "train/tiny-mock", "out": str(tmp_path / "sweep"),
             "overrides": ["logging.tensorboard=false", "train.lr=3e-3", "train.steps=3"], "baseline": True,
             "seeds": [1, 2], "data_seed": 11,
             "grid": {"teacher": [{"name": "t3", "checkpoint": str(teacher), "cache": {"top_k": "all"}}],
                      "alpha": [0.3]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    # the sweep itself in this process (its runs and its cache job are its subprocesses)
    rc, out, err = mkd_in_process(capsys, "sweep", tmp_path / "s.yaml", "--local")
    assert rc == 0, out[-3000:] + err[-3000:]
    passes = [line for line in out.splitlines() if "one teacher pass" in line]
    assert len(passes) == 1 and "for 2 points" in passes[0], out
    cache = tmp_path / "sweep" / "caches" / "t3"
    assert (cache / "COMPLETE").is_file()
    for run in (tmp_path / "sweep" / "runs").iterdir():
        log = (run / "train.log").read_text()
        if "baseline" not in run.name:
            assert f"distilling from the teacher cache {cache}" in log, run.name
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "0 online (one per KD run) and 1 cached" in report
    assert "Seeds varied: initialisation." in report
    # the report of a real two-seed sweep: paired (a point x seed model), the claims as tests,
    # each verdict one of five; its exported table reads back into the same report
    assert "## Paired gains (student)" in report and "## The paper's claims (student)" in report
    lines = report.splitlines()
    assert any(line.startswith("| t3 | 0.3 |") and "| 2 |" in line for line in lines), lines
    assert any(line.startswith("| (baseline) |") and "| 2 |" in line for line in lines)
    assert "point x seed model over 4 runs of 2 points, 1 degrees of freedom" in report
    assert "## Is distillation worth its compute here? (student)" in report
    doc = json.loads((tmp_path / "sweep" / "report.json").read_text())
    claims = doc["students"]["student"]["claims"]
    assert [c["claim"] for c in claims] == [1, 2, 3, 4]
    assert {c["verdict"] for c in claims} <= {"holds", "does not hold", "mixed", "inconclusive", "not tested"}
    assert {p["compute"]["a"] < p["compute"]["b"] for p in doc["compute"]["student"]["points"]} == {True}
    rc, _, err = mkd_in_process(capsys, "report", "--table", tmp_path / "sweep" / "report.csv", "--out",
                                tmp_path / "again")
    assert rc == 0, err
    assert json.loads((tmp_path / "again" / "report.json").read_text()) == doc
    # run again: every point is finished, the teacher does not run again
    rc, out, err = mkd_in_process(capsys, "sweep", tmp_path / "s.yaml", "--local")
    assert rc == 0 and out.count("finished, skipped") == 4 and "one teacher pass" not in out, out + err
