"""Conversion reads and copies only files inside the directory it is given: a `tokenizer.json`
(or any file) that links outside is refused in one line before anything is written; links
inside the directory and the Hugging Face hub cache's snapshot -> blobs layout are fine."""

from __future__ import annotations

import pytest

from megatron_kd.cli.main import main
from megatron_kd.convert.hf import check_links
from megatron_kd.errors import ConfigError
from tests.convert.test_hf import make_hf_model


def test_links_inside_and_hub_cache_layout_are_fine(tmp_path):
    model = tmp_path / "models--org--tiny"
    snap, blobs = model / "snapshots" / "abc123", model / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "sha1").write_text("{}")
    (snap / "config.json").symlink_to("../../blobs/sha1")
    (snap / "real.json").write_text("{}")
    (snap / "tokenizer_config.json").symlink_to("real.json")
    check_links(snap)


def test_link_outside_is_refused(tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer.json").symlink_to(secret)
    with pytest.raises(ConfigError, match="is a link to .*id_rsa, outside"):
        check_links(hf)


def test_convert_refuses_a_tokenizer_linked_outside(tmp_path, capsys):
    hf = make_hf_model(tmp_path / "hf", "llama")
    secret = tmp_path / "secret.json"
    secret.write_text('{"not": "a tokenizer"}')
    (hf / "tokenizer.json").symlink_to(secret)
    rc = main(["convert", "hf-to-mcore", str(hf), str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert rc == 2 and len(err) == 1 and "outside" in err[0], err
    assert not (tmp_path / "out").exists()
