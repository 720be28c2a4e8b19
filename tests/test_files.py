"""write_text_atomic: the package's one write-then-rename. A completed write replaces the file;
a failed one (here: the disk fills mid-write, a real 64 KiB tmpfs) leaves the old file whole
and no temporary behind."""

from __future__ import annotations

import errno

import pytest

from megatron_kd.files import write_text_atomic
from tests.helpers import small_disk


def test_replaces_in_one_rename(tmp_path):
    f = tmp_path / "state.json"
    write_text_atomic(f, "old")
    write_text_atomic(f, "new ünïcode")
    assert f.read_text(encoding="utf-8") == "new ünïcode"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_full_disk_keeps_the_old_file_and_no_temporary(tmp_path):
    disk = tmp_path / "disk"
    with small_disk(disk, "64k"):
        f = disk / "latest"
        write_text_atomic(f, "step_0000001")
        with pytest.raises(OSError) as exc:
            write_text_atomic(f, "x" * (1 << 20))
        assert exc.value.errno == errno.ENOSPC
        assert f.read_text() == "step_0000001"
        assert [p.name for p in disk.iterdir()] == ["latest"]
