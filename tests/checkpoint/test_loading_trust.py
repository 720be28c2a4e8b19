"""What a checkpoint load may do: read data, never run code (forged pickles in `.metadata`, in a
non-tensor item of a `.distcp` file, in a `.pt` file are refused in one line, nothing runs);
refuse a state file without its checksum; refuse a resume against another teacher; and
`mkd eval --json-out` writes only files it owns."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from megatron_kd.checkpoint.refs import STATE_FILE, read_state, write_state
from megatron_kd.checkpoint.safe_load import check_checkpoint_pickles
from megatron_kd.cli.main import main
from megatron_kd.config import load_config
from megatron_kd.distill.teacher import check_same_teacher, teacher_identity
from megatron_kd.errors import ConfigError
from tests.helpers import mkd


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint would carry)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real 3-step run of the tiny model (its final checkpoint is the good input)."""
    run = tmp_path_factory.mktemp("trust") / "teacher"
    mkd("train", "train/tiny-mock", f"run.dir={run}", "train.steps=3", "train.warmup_steps=0")
    return run


def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _rebuild_state(ckpt: Path) -> None:
    """Re-write the state file over the edited files (sizes, CRCs, its own CRC): a forger who
    knows the format passes every integrity check, so only the pickle check can stop it."""
    state = read_state(ckpt)
    write_state(ckpt, {k: v for k, v in state.items() if k not in ("files", "checksums", "state_crc")})


def _forge_metadata(src: Path, dst: Path, marker: Path) -> Path:
    shutil.copytree(src, dst)
    with open(dst / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # our own, genuine file
    metadata.storage_meta = _RunsCode(marker)
    with open(dst / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    _rebuild_state(dst)
    return dst


def _forge_bytes_item(src: Path, dst: Path, marker: Path) -> Path:
    """Replace the common state (a non-tensor item torch's planner loads with weights_only=False)
    by a pickle that runs code, appended to the .distcp file, the metadata pointing at it."""
    shutil.copytree(src, dst)
    with open(dst / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    index = next(i for i in metadata.storage_data if i.fqn.startswith("common_state"))
    info = metadata.storage_data[index]
    buf = io.BytesIO()
    torch.save([_RunsCode(marker)], buf)
    shard = dst / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(buf.getvalue())
    info.offset, info.length = offset, len(buf.getvalue())
    with open(dst / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    _rebuild_state(dst)
    return dst


def _forge_pt(src: Path, dst: Path, marker: Path) -> Path:
    shutil.copytree(src, dst)
    torch.save({"cpu": _RunsCode(marker)}, dst / "rng" / "rank0.pt")
    _rebuild_state(dst)
    return dst


FORGERIES = {"metadata": _forge_metadata, "bytes_item": _forge_bytes_item, "pt_file": _forge_pt}


def _one_error(capsys) -> str:
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if "error:" in line]
    assert "Traceback" not in out.err + out.out and len(errors) == 1, out.err[-2000:]
    return errors[0]


def test_genuine_checkpoint_passes(trained):
    check_checkpoint_pickles(_ckpt(trained))  # no error: the allowlist covers what torch writes
    assert read_state(_ckpt(trained))["teacher"] is None  # recorded (no teacher) in every save


@pytest.mark.parametrize("kind", sorted(FORGERIES))
@pytest.mark.parametrize("command", ["eval", "train_teacher"])
def test_forged_checkpoint_runs_nothing(kind, command, trained, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    forged = FORGERIES[kind](_ckpt(trained), tmp_path / "forged", marker)
    if command == "eval":
        rc = main(["eval", str(forged)])
    else:
        rc = main(["train", "train/tiny-mock", f"run.dir={tmp_path / 'student'}",
                   f"teacher.checkpoint={forged}", "train.steps=2", "train.warmup_steps=0"])
    line = _one_error(capsys)
    assert rc == 2 and "refused to load" in line and "nothing in it was run" in line, line
    assert not marker.exists(), "a forged checkpoint ran code"
    assert not (tmp_path / "student").exists()


def test_state_without_checksum_is_refused(trained, tmp_path):
    ckpt = tmp_path / "no-crc"
    shutil.copytree(_ckpt(trained), ckpt)
    state = json.loads((ckpt / STATE_FILE).read_text())
    del state["state_crc"]
    state["step"] = 99  # the edit the missing checksum would hide
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="has no 'state_crc'"):
        read_state(ckpt)


def test_resume_against_another_teacher_is_refused(trained, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(trained, teacher)
    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'student'}", f"teacher.checkpoint={teacher}"])
    saved = {"teacher": teacher_identity(cfg)}
    assert saved["teacher"]["step"] == 3
    check_same_teacher(cfg, saved, tmp_path)  # the same teacher: resumes
    check_same_teacher(cfg, {}, tmp_path)  # a checkpoint from before the record: resumes
    # The teacher trained further in place: its run dir's latest is another checkpoint.
    newer = teacher / "checkpoints" / "step_0000009"
    shutil.copytree(_ckpt(teacher), newer)
    state = read_state(newer)
    write_state(newer, {**{k: v for k, v in state.items() if k not in ("files", "checksums", "state_crc")},
                        "step": 9})
    (teacher / "checkpoints" / "latest").write_text(newer.name)
    with pytest.raises(ConfigError) as err:
        check_same_teacher(cfg, saved, tmp_path)
    assert "at step 3" in str(err.value) and "at step 9" in str(err.value)
    no_teacher = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'student'}"])
    with pytest.raises(ConfigError, match="names no teacher"):
        check_same_teacher(no_teacher, saved, tmp_path)


def test_a_moved_project_resumes_against_its_teacher(trained, tmp_path):
    """The teacher is known by its step and state checksum (every file's checksum), not by its
    absolute path: a project copied elsewhere resumes; another teacher there still does not."""
    teacher = tmp_path / "project" / "teacher"
    shutil.copytree(trained, teacher)
    cfg = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'student'}", f"teacher.checkpoint={teacher}"])
    saved = {"teacher": teacher_identity(cfg)}
    moved = tmp_path / "moved" / "teacher"
    shutil.copytree(teacher, moved)
    at_moved = load_config("train/tiny-mock", [f"run.dir={tmp_path / 'student'}", f"teacher.checkpoint={moved}"])
    assert teacher_identity(at_moved)["checkpoint"] != saved["teacher"]["checkpoint"]
    check_same_teacher(at_moved, saved, tmp_path)
    ckpt = _ckpt(moved)
    state = read_state(ckpt)
    write_state(ckpt, {**{k: v for k, v in state.items() if k not in ("files", "checksums", "state_crc")},
                       "tokens": state["tokens"] + 1})  # other content at the same step
    with pytest.raises(ConfigError, match="was trained against"):
        check_same_teacher(at_moved, saved, tmp_path)


@pytest.mark.parametrize("where", ["state_file", "inside_checkpoint", "inside_run_dir", "other_file"])
def test_json_out_never_overwrites_what_it_does_not_own(where, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = _ckpt(run)
    other = tmp_path / "notes.txt"
    other.write_text("my notes")
    target = {"state_file": ckpt / STATE_FILE, "inside_checkpoint": ckpt / "result.json",
              "inside_run_dir": run / "result.json", "other_file": other}[where]
    before = target.read_bytes() if target.exists() else None
    rc = main(["eval", str(ckpt), "--json-out", str(target)])
    line = _one_error(capsys)
    assert rc == 2 and "--json-out" in line, line
    assert (target.read_bytes() if target.exists() else None) == before
    read_state(ckpt)  # still whole


def test_json_out_may_replace_an_earlier_result(tmp_path):
    from megatron_kd.cli.commands import check_json_out

    earlier = tmp_path / "results" / "eval.json"
    earlier.parent.mkdir()
    earlier.write_text(json.dumps({"checkpoint": "c", "step": 3, "tokens": 12, "loss": {"mock": 5.0}}))
    assert check_json_out(str(earlier)) == earlier.absolute()
    assert check_json_out(str(tmp_path / "new" / "x.json")) == (tmp_path / "new" / "x.json").absolute()


def test_a_cache_teacher_is_known_by_what_it_holds_not_where():
    """A teacher cache moved with its project resumes; another value kind of the same teacher
    (sampled draws, not top-k) does not; a record from before the value kind was kept is
    compared as then, by its path too."""
    cfg = load_config("train/tiny-mock", [])
    teacher = {"checkpoint": "/a/teacher", "step": 3, "state_crc": "crc32:0000abcd"}
    saved = {"cache": "/a/cache", "teacher": teacher, "top_k": 64, "sampled": False, "dtype": "fp32"}
    moved = dict(saved, cache="/b/cache", teacher=dict(teacher, checkpoint="/b/teacher"))
    check_same_teacher(cfg, {"teacher": saved}, Path("ckpt"), now=moved)
    for other in (dict(moved, sampled=True), dict(moved, top_k=32), dict(moved, dtype="bf16"),
                  dict(moved, teacher=dict(teacher, state_crc="crc32:0000abce"))):
        with pytest.raises(ConfigError, match="was trained against"):
            check_same_teacher(cfg, {"teacher": saved}, Path("ckpt"), now=other)
    old = {k: v for k, v in saved.items() if k not in ("sampled", "dtype")}
    check_same_teacher(cfg, {"teacher": old}, Path("ckpt"), now=saved)
    for other in (moved, dict(saved, top_k=32)):  # its path is all that tells its cache's precision
        with pytest.raises(ConfigError, match="was trained against"):
            check_same_teacher(cfg, {"teacher": old}, Path("ckpt"), now=other)
