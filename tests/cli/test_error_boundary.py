"""The CLI's one error boundary: OS, memory, recursion and JSON failures of any command are one
`mkd: error:` line with the documented exit code (no traceback); anything else is a bug and
keeps its traceback. Inputs nested thousands deep are refused by depth, in one line."""

from __future__ import annotations

import errno
import json

import pytest

from megatron_kd.cli import commands
from megatron_kd.cli.main import main


def one_error(capsys, code: int, rc: int, text: str) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert rc == code, out + err
    assert len(lines) == 1, out + err
    assert text in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


RAISED = {
    "disk_full": (OSError(errno.ENOSPC, "No space left on device", "/data/run/ckpt.bin"), 4,
                  "no space left on the device: /data/run/ckpt.bin; free space"),
    "name_too_long": (OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/" + "n" * 300), 4,
                      "file name too long: /tmp/nnn"),
    "permission": (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 4,
                   "permission denied: /root/x; choose a path"),
    "read_only": (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 4, "read-only file system: /ro/x"),
    "port_taken": (OSError(errno.EADDRINUSE, "Address already in use"), 4, "MASTER_PORT"),
    "other_errno": (OSError(errno.EIO, "Input/output error", "/dev/x"), 4, "Input/output error: /dev/x"),
    "memory": (MemoryError(), 4, "out of memory"),
    "torch_cpu_alloc": (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to "
                                     "allocate 512000000000 bytes"), 4, "512000000000 bytes"),
    "recursion": (RecursionError("maximum recursion depth exceeded"), 2, "nested too deeply"),
    "overflow": (OverflowError("cannot convert float infinity to integer"), 2, "too large to compute with"),
    "not_utf8": (UnicodeDecodeError("utf-8", b"\x7fELF\xff", 4, 5, "invalid start byte"), 2,
                 "not UTF-8 text (invalid start byte at byte 4)"),
    "json": (json.JSONDecodeError("Expecting value", "{x", 1), 2, "invalid JSON (Expecting value"),
    "torch_save_full": (RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                                     "writing file data/0: file write failed"), 4, "disk is probably full"),
    "rust_writer_full": (Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
                         4, "disk is probably full"),
}


def _wrapped_enospc():
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache/idx.npy")
    except OSError as exc:  # how megatron-core's dataset builder reports it
        raise Exception("Failed to write dataset materials to the data cache directory") from exc


def test_a_wrapped_os_error_is_described_by_its_cause(capsys, monkeypatch):
    monkeypatch.setattr(commands, "cmd_recipes", lambda args: _wrapped_enospc())
    one_error(capsys, 4, main(["recipes"]), "no space left on the device: /data/cache/idx.npy")


def test_an_error_met_while_handling_another_is_not_explained_by_it(monkeypatch):
    def buggy(args):
        try:
            open("/nonexistent/file")
        except FileNotFoundError:
            return {}["missing"]  # a bug inside the handler: not "no such file"

    monkeypatch.setattr(commands, "cmd_recipes", buggy)
    with pytest.raises(KeyError):
        main(["recipes"])


@pytest.mark.parametrize("case", sorted(RAISED))
def test_failure_class_is_one_line(case, capsys, monkeypatch):
    exc, code, text = RAISED[case]

    def failing(args):
        raise exc

    monkeypatch.setattr(commands, "cmd_recipes", failing)
    line = one_error(capsys, code, main(["recipes"]), text)
    assert len(line) < 1200


def test_name_too_long_says_how_long(capsys, monkeypatch):
    monkeypatch.setattr(commands, "cmd_recipes", lambda args: open("/tmp/" + "n" * 300, "w"))
    one_error(capsys, 4, main(["recipes"]), "its longest name is 300 bytes")


def test_debug_shows_the_traceback(monkeypatch, capsys):
    def failing(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/x")

    monkeypatch.setattr(commands, "cmd_recipes", failing)
    one_error(capsys, 4, main(["recipes"]), "no space left")
    with pytest.raises(OSError):
        main(["--debug", "recipes"])


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only the listed classes are one line: a KeyError from mkd's own code is a bug to report."""
    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(commands, "cmd_recipes", lambda args: (_ for _ in ()).throw(MemoryError()))
    one_error(capsys, 4, main(["recipes"]), "out of memory")
    monkeypatch.setattr(commands, "cmd_recipes", buggy)
    with pytest.raises(KeyError):
        main(["recipes"])


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in ("2 input error", "3 setup error", "4 OS or resource error", "130 interrupted"):
        assert code in out


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "train/tiny-mock", "--nproc", "two"])
    out, err = capsys.readouterr()
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("mkd: error:") and "--nproc" in err and "usage" not in err


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("case", ["recipe", "override", "alias_chain", "just_too_deep"])
def test_deep_nesting_is_refused_by_depth(case, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    argv = ["config", str(recipe)]
    if case == "recipe":
        recipe.write_text(f"base: train/tiny-mock\ntrain:\n  steps: {DEEP}\n")
    elif case == "override":
        argv = ["config", "train/tiny-mock", f"train.steps={DEEP}"]
    elif case == "alias_chain":  # shallow text, deep once the aliases are expanded
        chain = "\n".join(["  a0: &a0 [1]"] + [f"  a{i}: &a{i} [*a{i - 1}]" for i in range(1, 3000)])
        recipe.write_text(f"base: train/tiny-mock\nx:\n{chain}\n")
    else:
        recipe.write_text(f"base: train/tiny-mock\ntrain:\n  steps: {'[' * 65 + ']' * 65}\n")
    one_error(capsys, 2, main(argv), "nested more than 64 levels deep")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["r.yaml"] if recipe.exists() else [])


def test_deep_json_line_is_one_line(tmp_path, capsys):
    sweep = tmp_path / "s"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "points.json").write_text(DEEP)
    one_error(capsys, 2, main(["report", str(sweep)]), "nested more than 64 levels deep")
    assert sorted(p.name for p in sweep.iterdir()) == ["points.json", "runs"]


class _Manager:  # lm-eval's TaskManager as check_tasks reads it (building the real one takes ~20 s)
    include_path = None
    all_tasks = ["arc_easy", "hellaswag", "lambada_openai"]

    def match_tasks(self, names):
        return [n for n in names if n in self.all_tasks or n == "arc_*"]

    def load_task_or_group(self, names):  # the data check (tests/evals/test_lm_eval_offline_data.py): all here
        return {n: None for n in names}


@pytest.mark.parametrize("tasks,bad", [(["hellaswagg"], "'hellaswagg' (close: hellaswag)"),
                                       (["arc_easy", "nosuchtask"], "'nosuchtask'")])
def test_unknown_lm_eval_task_is_one_line(tasks, bad):
    from megatron_kd.errors import ConfigError
    from megatron_kd.evals.lm_eval_adapter import check_tasks

    with pytest.raises(ConfigError, match="unknown lm-eval task") as e:
        check_tasks(tasks, _Manager())
    assert bad in str(e.value) and "\n" not in str(e.value)
    check_tasks(["arc_easy", "arc_*"], _Manager())  # known names and globs pass
