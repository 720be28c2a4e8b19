"""JSON and JSONL files runs leave behind: one-line errors, a cut-short last line tolerated."""

import pytest

from megatron_kd.errors import ConfigError
from megatron_kd.jsonio import read_json, read_jsonl


def test_read_jsonl_tolerates_a_cut_last_line_only(tmp_path, caplog):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(f)] == [1, 2]
    assert "line 3 is cut short" in caplog.text
    f.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl:2 is not a JSON object"):
        read_jsonl(f)
    f.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(ConfigError, match=r":2 is not a JSON object"):
        read_jsonl(f)


def test_read_json_names_the_file_and_the_problem(tmp_path):
    f = tmp_path / "points.json"
    f.write_text("[1, 2")
    with pytest.raises(ConfigError, match="points.json is not valid JSON"):
        read_json(f, list, "sweep points")
    f.write_text("{}")
    with pytest.raises(ConfigError, match="holds a JSON dict, not a list"):
        read_json(f, list)
    with pytest.raises(ConfigError, match="cannot read"):
        read_json(tmp_path / "missing.json")
