"""Preprocessing onto a disk that fills up: one line naming the disk-full error, exit 4, and no
partial file left (the space is given back). A real full file system: a 256 KiB tmpfs (root:
the test suite runs as root here and in CI; elsewhere it is skipped)."""

from __future__ import annotations

import json

import pytest

from megatron_kd.cli.main import main
from tests import helpers


@pytest.fixture
def small_disk(tmp_path):
    with helpers.small_disk(tmp_path / "small", "256k") as mnt:
        yield mnt


def test_full_disk_leaves_no_partial_files(small_disk, text_corpus, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    doc = " ".join(["the quick brown fox jumps over the lazy dog"] * 200)
    src.write_text("".join(json.dumps({"text": f"{i} {doc}"}) + "\n" for i in range(100)))  # ~400 KB of ids
    rc = main(["data", "preprocess", "--input", str(src), "--tokenizer", text_corpus["tokenizer"],
               "--output-prefix", str(small_disk / "out"), "--workers", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert rc == 4 and len(err) == 1 and "no space left on the device" in err[0], err
    assert list(small_disk.iterdir()) == [], "partial files left on the full disk"
