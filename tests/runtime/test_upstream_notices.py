"""megatron-core's deprecation notices (runtime/cpu_compat.py): GPTModel's said once per process
tree, in one line, on its own logger; the async-save notice never."""

import logging
import os

import pytest

from megatron_kd.console import NOTICES_SHOWN_ENV
from megatron_kd.runtime import cpu_compat

GPT = "megatron.core.models.gpt.gpt_model"
SAVE = "megatron.core.dist_checkpointing.strategies.torch"
BANNER = "GPTModel IS DEPRECATED. GPTModel is only accepting critical bug fixes, no new features."


@pytest.fixture
def notices(monkeypatch, caplog):
    monkeypatch.delenv(NOTICES_SHOWN_ENV, raising=False)
    for name in (GPT, SAVE):  # this test's filters only, the process's put back after it
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    cpu_compat.quiet_upstream_notices()
    cpu_compat.quiet_upstream_notices()  # idempotent: one filter per logger
    assert len(logging.getLogger(GPT).filters) == 1
    caplog.set_level(logging.WARNING)
    return caplog


def test_the_gpt_model_notice_once_per_process_tree(notices, monkeypatch):
    for _ in range(3):  # a student, its teacher, a virtual stage more
        logging.getLogger(GPT).warning(BANNER)
    logging.getLogger(GPT).warning("another warning")
    assert [r.getMessage() for r in notices.records] == [cpu_compat.GPT_MODEL_NOTICE, "another warning"]
    assert os.environ[NOTICES_SHOWN_ENV] == "GPTModel"  # what the processes it starts inherit
    notices.clear()
    monkeypatch.setenv(NOTICES_SHOWN_ENV, "all")  # a sweep's job: its parent says none
    logging.getLogger(GPT).warning(BANNER)
    assert notices.records == []


def test_the_async_save_notice_never(notices):
    logging.getLogger(SAVE).warning("MCore's async save is deprecated and will be removed in the future releases.")
    assert notices.records == []
