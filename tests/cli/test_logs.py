"""Console logging (cli/logs.py): the handler writes to sys.stdout as it is at each record, so
an in-process `mkd` under a swapped stdout (pytest's capture) leaves nothing behind that writes
to a stream closed since; found when the suite's order put a report test after one."""

import contextlib
import io
import logging
import sys

from megatron_kd.cli.logs import setup_logging


def test_logs_follow_the_current_stdout_after_a_swapped_one_is_closed(capsys):
    log = logging.getLogger("megatron_kd.test")
    earlier = io.StringIO()
    with contextlib.redirect_stdout(earlier):  # an earlier in-process job set logging up here
        setup_logging("info", 0)
        log.info("during")
    earlier.close()
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):  # logging reports a failed emit on stderr
        log.warning("after")
    out = capsys.readouterr().out
    assert "after" in out and "Logging error" not in errors.getvalue(), errors.getvalue()
    assert sys.stdout is not earlier
