"""A rank waiting for rank 0 to convert a Hugging Face teacher: it stops as soon as rank 0 says
the conversion failed (one line with rank 0's reason), and otherwise at its bound, instead of
the hour it used to wait."""

from __future__ import annotations

import time

import pytest

from megatron_kd.checkpoint import hf_cache
from megatron_kd.errors import ConfigError


@pytest.fixture
def hf_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANK", "1")
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_waiting_rank_stops_when_rank0_reports_failure(hf_dir):
    out = hf_cache.cache_dir_for(hf_dir)
    out.parent.mkdir(parents=True)
    out.with_name(out.name + hf_cache.FAILED_SUFFIX).write_text(
        f"converting the Hugging Face teacher {hf_dir} failed: bad shape for lm_head")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="rank 0 reported: .*bad shape for lm_head"):
        hf_cache.ensure_converted(hf_dir, timeout_s=60)
    assert time.monotonic() - t0 < 5


def test_waiting_rank_gives_up_at_its_bound_and_says_what_to_do(hf_dir):
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"waited 1 s for rank 0 .*mkd convert hf-to-mcore"):
        hf_cache.ensure_converted(hf_dir, timeout_s=1)
    assert time.monotonic() - t0 < 5


def test_a_stale_failure_report_is_not_read_as_this_conversions(hf_dir):
    out = hf_cache.cache_dir_for(hf_dir)
    out.parent.mkdir(parents=True)
    stale = out.with_name(out.name + hf_cache.FAILED_SUFFIX)
    stale.write_text("an old failure")
    old = time.time() - 3600
    import os

    os.utime(stale, (old, old))
    with pytest.raises(ConfigError, match="waited 1 s"):
        hf_cache.ensure_converted(hf_dir, timeout_s=1)
