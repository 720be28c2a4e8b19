"""`mkd eval --tasks T` when T's data is not on the machine: one line saying the data is not
available offline and how to provide it (a local task YAML reading local files), raised by the
check `mkd eval` runs before the model loads (it was a 55-line traceback from inside the rank)."""

import pytest
import yaml

from megatron_kd.errors import ConfigError

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # lm-eval indexes its ~10,000 task YAMLs first (about 20 s)

TINY = "tests/evals/tasks/mkd_tiny_mc.yaml"


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    from megatron_kd.evals.lm_eval_adapter import task_manager

    folder = tmp_path_factory.mktemp("tasks")
    local = yaml.safe_load(open(TINY))
    hub = dict(local, task="mkd_hub_only", dataset_path="mkd-tests/not-on-this-machine")
    hub.pop("dataset_kwargs")
    missing = dict(local, task="mkd_missing_file",
                   dataset_kwargs={"data_files": {"test": str(folder / "absent.jsonl")}})
    for spec in (hub, missing):
        (folder / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec))
    (folder / "mkd_tiny_mc.yaml").write_text(open(TINY).read())
    return task_manager(str(folder))


@pytest.mark.parametrize("task", ["mkd_hub_only", "mkd_missing_file"])
def test_a_task_without_local_data_is_one_line(manager, task):
    from megatron_kd.evals.lm_eval_adapter import check_tasks

    with pytest.raises(ConfigError) as err:
        check_tasks([task], manager)
    text = str(err.value)
    assert f"lm-eval task '{task}': its data is not available offline" in text and "\n" not in text
    assert "give a local task YAML" in text and "--include-path" in text and len(text) < 600


def test_a_task_with_local_data_passes(manager):
    from megatron_kd.evals.lm_eval_adapter import check_tasks

    check_tasks(["mkd_tiny_mc"], manager)
