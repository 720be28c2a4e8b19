"""Preprocessing onto a disk that fills up: one line naming the disk-full error, exit 4, and no
partial file left (the space is given back). A real full file system: a 256 KiB tmpfs (root:
the test suite runs as root here and in CI; elsewhere it is skipped)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from megatron_kd.cli.main import main


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_leaves_no_partial_files(small_disk, text_corpus, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    doc = " ".join(["the quick brown fox jumps over the lazy dog"] * 200)
    src.write_text("".join(json.dumps({"text": f"{i} {doc}"}) + "\n" for i in range(100)))  # ~400 KB of ids
    rc = main(["data", "preprocess", "--input", str(src), "--tokenizer", text_corpus["tokenizer"],
               "--output-prefix", str(small_disk / "out"), "--workers", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert rc == 4 and len(err) == 1 and "no space left on the device" in err[0], err
    assert list(small_disk.iterdir()) == [], "partial files left on the full disk"
