"""SIGTERM during start-up stops the run even when the handler's SystemExit lands inside a
third-party `try: import x / except:` (megatron-core has such bare excepts around optional
imports) and is swallowed there; after the first step starts, SIGTERM only asks for a
checkpoint at the next step boundary."""

from __future__ import annotations

import os
import signal

import pytest

from megatron_kd.runtime import preemption


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(preemption, "_received", [])
    monkeypatch.setattr(preemption, "_training", [False])
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    preemption.install()
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def test_sigterm_swallowed_by_a_bare_except_still_stops_start_up(fresh):
    try:  # what megatron-core does around an optional import
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises SystemExit here...
    except:  # noqa: E722  (the bare except under test)
        pass  # ...and it is swallowed
    assert preemption._received == [signal.SIGTERM]
    with pytest.raises(SystemExit) as exc:
        preemption.check_start_up()
    assert exc.value.code == 128 + signal.SIGTERM
    with pytest.raises(SystemExit):
        preemption.training_started()


def test_after_training_starts_sigterm_is_a_checkpoint_request(fresh):
    preemption.check_start_up()  # nothing received: no-op
    preemption.training_started()
    os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised
    assert preemption._received == [signal.SIGTERM] and preemption.requested()
    assert preemption.signal_names() == "SIGTERM"


def test_usr1_during_start_up_is_kept_not_fatal(fresh):
    os.kill(os.getpid(), signal.SIGUSR1)
    preemption.check_start_up()  # the time-limit warning waits for the first step
    preemption.training_started()
    assert preemption.requested()
