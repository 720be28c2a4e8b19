"""The tokenizer of an exported Hugging Face directory: tokenizer.json from a sentencepiece model
(the same ids as sentencepiece), the BOS/EOS settings as the source has them (a tokenizer.json's
own post-processor, or the source's tokenizer_config.json beside the run's tokenizer), and what
transformers' AutoTokenizer makes of the directory."""

from __future__ import annotations

import argparse
import json
import textwrap

import pytest

from megatron_kd.convert.hf_tokenizer import export_tokenizer, sentencepiece_to_json
from megatron_kd.data.tokenizer import Tokenizer, train_sentencepiece

TEXT = "\n".join([argparse.__doc__, json.__doc__, textwrap.__doc__] + [
    f"Line {i}: the quick brown fox jumps over the lazy dog, {i * 37} times; naïve café, ünïcode {i % 7}."
    for i in range(100)])
HELD_OUT = ["An unseen sentence with   three spaces,\ttabs and 9876 digits.", " 日本語 🙂 Ωmega", "end\n"]


def _sentencepiece(tmp_path, kind="bpe", special=()):
    (tmp_path / "text.txt").write_text(TEXT)
    return train_sentencepiece([tmp_path / "text.txt"], tmp_path / f"sp-{kind}", 400, model_type=kind,
                               special_tokens=special)


def _checkpoint_with(tmp_path, name, src):
    """A checkpoint directory as a run leaves it, as far as the export reads it: its tokenizer file."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / name).write_bytes(src.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    return ckpt, out


def _hf_tokenizer_with_bos(path, docs):
    """A byte-level BPE tokenizer.json whose post-processor adds <|begin_of_text|>, as Llama 3's."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<|begin_of_text|>", "<|end_of_text|>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    tok.save(str(path))
    return path


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_sentencepiece_model_gets_a_tokenizer_json_with_its_ids(kind, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    ckpt, out = _checkpoint_with(tmp_path, "tokenizer.model", _sentencepiece(tmp_path, kind))
    written = export_tokenizer(ckpt, out, None, None, 256)
    assert written == ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "generation_config.json"]
    ours, theirs = Tokenizer(ckpt / "tokenizer.model"), HFTokenizer.from_file(str(out / "tokenizer.json"))
    for text in HELD_OUT:  # as training encoded: no BOS, the same ids, the same text back
        assert theirs.encode(text).ids == ours.encode(text), text
        assert theirs.decode(ours.encode(text), skip_special_tokens=False) == ours.decode(ours.encode(text))
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>" and config["add_bos_token"] is False
    assert config["model_max_length"] == 256 and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": 3, "bos_token_id": 2}


def test_a_tokenizer_json_keeps_the_bos_its_post_processor_adds(tmp_path):
    src = _hf_tokenizer_with_bos(tmp_path / "tokenizer.json", TEXT.splitlines())
    ckpt, out = _checkpoint_with(tmp_path, "tokenizer.json", src)
    assert export_tokenizer(ckpt, out, None, None, 128)[1:] == ["tokenizer_config.json", "special_tokens_map.json",
                                                                 "generation_config.json"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|begin_of_text|>" and config["add_bos_token"] is True
    assert config["eos_token"] == "<|end_of_text|>" and config["add_eos_token"] is False
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": 2, "bos_token_id": 1}


def test_the_source_settings_travel_with_the_same_tokenizer_only(tmp_path):
    """A student trained on its teacher's tokenizer.json: the teacher's tokenizer_config.json
    beside it is exported when the file is byte for byte the checkpoint's."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    src = _hf_tokenizer_with_bos(teacher / "tokenizer.json", TEXT.splitlines())
    (teacher / "tokenizer_config.json").write_text('{"bos_token": "<|begin_of_text|>", "source": "teacher"}')
    ckpt, out = _checkpoint_with(tmp_path, "tokenizer.json", src)
    assert export_tokenizer(ckpt, out, str(src), None, 128) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "tokenizer_config.json").read_text())["source"] == "teacher"
    _hf_tokenizer_with_bos(src, TEXT.splitlines()[:50])  # the teacher's file changed since: not its settings
    out2 = tmp_path / "out2"
    out2.mkdir()
    export_tokenizer(ckpt, out2, str(src), None, 128)
    assert "source" not in json.loads((out2 / "tokenizer_config.json").read_text())


def test_user_defined_pieces_leave_the_conversion_to_transformers(tmp_path, capsys):
    """sentencepiece puts its dummy prefix before a user-defined piece that starts a text, which
    a tokenizer.json cannot: nothing is written that would encode differently."""
    model = _sentencepiece(tmp_path, "bpe", special=("<|sep|>",))
    assert not sentencepiece_to_json(model, tmp_path / "tokenizer.json")
    assert "sample texts differently from sentencepiece" in capsys.readouterr().err
    assert not (tmp_path / "tokenizer.json").exists()
    ckpt, out = _checkpoint_with(tmp_path, "tokenizer.model", model)
    assert export_tokenizer(ckpt, out, None, None, 128) == ["tokenizer.model"]


@pytest.mark.slow
def test_auto_tokenizer_encodes_as_the_source(tmp_path):
    """transformers' AutoTokenizer on the exported files: a sentencepiece student's ids without a
    BOS (as it was trained), a Hugging Face tokenizer's with the BOS it adds."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    ckpt, out = _checkpoint_with(tmp_path, "tokenizer.model", _sentencepiece(tmp_path))
    export_tokenizer(ckpt, out, None, None, 256)
    auto, ours = AutoTokenizer.from_pretrained(out), Tokenizer(ckpt / "tokenizer.model")
    assert (auto.bos_token, auto.eos_token, auto.eos_token_id) == ("<s>", "</s>", ours.eod)
    for text in HELD_OUT:
        assert auto(text)["input_ids"] == ours.encode(text), text
        assert auto.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    src = _hf_tokenizer_with_bos(tmp_path / "tokenizer.json", TEXT.splitlines())
    hf_ckpt, hf_out = tmp_path / "hf-ckpt", tmp_path / "hf-out"
    hf_ckpt.mkdir()
    hf_out.mkdir()
    (hf_ckpt / "tokenizer.json").write_bytes(src.read_bytes())
    export_tokenizer(hf_ckpt, hf_out, None, None, 128)
    auto, source = AutoTokenizer.from_pretrained(hf_out), HFTokenizer.from_file(str(src))
    for text in HELD_OUT:
        ids = auto(text)["input_ids"]
        assert ids == source.encode(text).ids and ids[0] == auto.bos_token_id == 1, text
