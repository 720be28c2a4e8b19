"""Weights & Biases tracking (logging.wandb): an offline run records every metric of metrics.jsonl
at its step, the resolved config and the sweep point's coordinates; `mkd sweep` groups its points;
asking for W&B without the package is one line before anything starts."""

import glob
import json
import struct

import pytest

from tests.helpers import env_with, mkd, read_metrics

BLOCK = 32768  # the .wandb transaction log: LevelDB-style blocks of records after a 7-byte header


def read_wandb_records(path: str) -> list:
    """The protobuf Records of an offline run's run-ID.wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, out, part = 7, [], b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            break
        part += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
            part = b""
    return out


@pytest.mark.slow
def test_offline_run_records_metrics_config_and_point(tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    mkd("train", "train/tiny-mock", f"run.dir={run}", "train.steps=4", "logging.eval_interval=2",
        "logging.wandb.project=mkd-test", "logging.wandb.mode=offline", "logging.wandb.group=g1",
        "logging.wandb.point={teacher: t@1M, alpha: 0.5, seed: 3}", env=env_with(WANDB_SILENT="true"),
        timeout=300)
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    (head,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in head.config.update}
    assert head.project == "mkd-test" and head.run_group == "g1" and head.display_name == "tiny-mock"
    assert config["point"] == {"teacher": "t@1M", "alpha": 0.5, "seed": 3}
    assert config["train"]["steps"] == 4 and config["model"]["name"] == "tiny"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[row["step"]] = row
    metrics = read_metrics(run)
    assert sorted(history) == [m["step"] for m in metrics]
    for m in metrics:  # every scalar of metrics.jsonl, at its step
        for key, value in m.items():
            if key != "step" and isinstance(value, (int, float)):
                assert history[m["step"]][key] == pytest.approx(value), key
    assert "val/mock" in history[2] and "val/mock" in history[4]
    # the run id is kept in the run dir: a resumed run continues the same W&B run; --overwrite
    # deletes the run dir (tests/cli), the id with it, and so starts a new one
    assert head.run_id == (run / "wandb" / "run_id").read_text()


def test_sweep_groups_its_points_and_passes_their_coordinates(tmp_path):
    from megatron_kd.study.sweep import expand, load_sweep, resolve_point

    (tmp_path / "s.yaml").write_text(
        "name: wb\nbase: train/tiny-mock\nout: " + str(tmp_path / "out") + "\n"
        "overrides: [logging.wandb.project=p, logging.wandb.mode=offline]\nseeds: [1, 2]\ndata_seed: 5\n"
        "grid:\n  teacher: [{name: t1, checkpoint: /x/ckpt, tokens: 1000}]\n  alpha: [0.5]\n")
    spec = load_sweep(tmp_path / "s.yaml")
    points = expand(spec)
    cfgs = [resolve_point(spec, p) for p in points]
    assert {c.logging.wandb.group for c in cfgs} == {"wb"}
    assert [c.logging.wandb.name for c in cfgs] == [p.name for p in points]
    kd = next(c for c, p in zip(cfgs, points) if p.teacher and p.meta["seed"] == 2)
    assert kd.logging.wandb.point == {"student": "student", "teacher": "t1", "teacher_tokens": 1000, "alpha": 0.5,
                                      "seed": 2, "seed_varies": "initialisation"}


def test_wandb_asked_for_but_not_installed_is_one_line(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "wandb.py").write_text("raise ImportError('No module named wandb')\n")
    env = env_with()
    env["PYTHONPATH"] = f"{shim}:{env['PYTHONPATH']}"
    r = mkd("train", "train/tiny-mock", f"run.dir={tmp_path / 'run'}", "logging.wandb.project=p", env=env,
            check=False)
    assert r.returncode != 0
    assert "logging.wandb.project is set but the wandb package is not installed: pip install wandb" in r.stderr
    assert len([line for line in r.stderr.strip().splitlines() if "error" in line.lower()]) == 1
    assert not (tmp_path / "run").exists()
