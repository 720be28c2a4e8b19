"""Hugging Face <-> megatron-core conversion, checked against transformers (offline, tiny
random models built from configs)."""

import json

import pytest
import torch

from tests.distributed import run_distributed
from tests.helpers import env_with, mkd, mkd_in_process, read_metrics


def make_hf_model(path, kind: str, tokenizer_json=None):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "llama":  # GQA, untied, llama3.1 RoPE scaling
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={
            "rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    else:  # tied embeddings, QK-norm, head_dim independent of hidden size
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=32, tie_word_embeddings=True))
    with torch.no_grad():  # RMSNorm weights are ones at init: make them informative
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    if tokenizer_json:
        (path / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    return path


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_logits_match_transformers_at_tp1_and_tp2_and_round_trip(kind, tmp_path):
    hf = make_hf_model(tmp_path / "hf", kind)
    mkd("convert", "hf-to-mcore", str(hf), str(tmp_path / "mc"))
    assert (tmp_path / "mc" / "model.yaml").is_file()
    for tp in (1, 2):
        results = run_distributed("tests.workers.convert:logits_match", tp, tmp_path / f"w{tp}",
                                  hf_dir=str(hf), mcore_dir=str(tmp_path / "mc"), tp=tp)
        r = results[0]
        assert r["tp"] == tp and r["padded"] == 256  # 250 padded for TP on import
        assert r["max_diff"] < 1e-4, r

    # Round trip: identical tensors, and a config transformers loads.
    mkd("convert", "mcore-to-hf", str(tmp_path / "mc"), str(tmp_path / "back"))
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    original = load_file(str(hf / "model.safetensors"))
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    back = {}
    for f in set(index["weight_map"].values()):
        back.update(load_file(str(tmp_path / "back" / f)))
    expected = {k: v for k, v in original.items() if not (kind == "qwen3" and k == "lm_head.weight")}
    assert set(back) == set(expected)
    for k, v in expected.items():
        assert torch.equal(back[k], v), k
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back", local_files_only=True)
    assert type(reloaded).__name__ == ("LlamaForCausalLM" if kind == "llama" else "Qwen3ForCausalLM")


def test_unsupported_architecture_and_bad_dirs(tmp_path, capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    rc, _, err = mkd_in_process(capsys, "convert", "hf-to-mcore", tmp_path / "gpt2", tmp_path / "o")
    assert rc == 2 and "unsupported Hugging Face architecture GPT2LMHeadModel" in err
    rc, _, err = mkd_in_process(capsys, "convert", "hf-to-mcore", tmp_path / "nothing", tmp_path / "o")
    assert rc == 2 and "not a Hugging Face model directory" in err


def _hf_tokenizer(path, docs, vocab=250):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<|end_of_text|>"]))
    tok.save(str(path))
    return path


@pytest.mark.slow
def test_kd_from_a_hugging_face_teacher_directory(tmp_path, capsys, monkeypatch):
    """A KD recipe names the HF directory directly: converted once (cached), checked, trained.
    What ends before any rank starts (preprocessing, the pair check, a refused pair) runs in
    this process."""
    from tests.conftest import pydoc_documents

    docs = pydoc_documents()
    tok = _hf_tokenizer(tmp_path / "tokenizer.json", docs[:200])
    hf = make_hf_model(tmp_path / "hf", "llama", tokenizer_json=tok)
    (hf / "tokenizer_config.json").write_text(json.dumps({  # the teacher's own settings
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|end_of_text|>", "model_max_length": 77}))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:120]))
    rc, _, err = mkd_in_process(capsys, "data", "preprocess", "--input", tmp_path / "d.jsonl", "--tokenizer",
                                hf / "tokenizer.json", "--output-prefix", tmp_path / "d")
    assert rc == 0, err
    env = env_with(MKD_CACHE=str(tmp_path / "cache"))
    monkeypatch.setenv("MKD_CACHE", env["MKD_CACHE"])  # the same cache for the in-process commands
    common = ["train", "train/tiny-mock", "data.mock=false", f"data.tokenizer={hf / 'tokenizer.json'}",
              f"data.train=[{tmp_path / 'd'}]", f"data.valid={{indomain: {tmp_path / 'd'}}}",
              "model.vocab_size=250", "train.steps=3", "logging.eval_samples=8",
              f"teacher.checkpoint={hf}", "kd.alpha=0.5"]
    r = mkd(*common, f"run.dir={tmp_path / 'run'}", env=env)
    assert "done: 3 steps" in r.stdout
    m = read_metrics(tmp_path / "run")
    assert all(x["kd_loss"] > 0 and x["teacher_lm_loss"] > 0 for x in m)
    cached = list((tmp_path / "cache" / "hf").iterdir())
    assert len(cached) == 1 and (cached[0] / "CONVERTED").is_file()
    # The pair check agrees; a student tokenized with another tokenizer is refused.
    rc, out, err = mkd_in_process(capsys, "check-pair", hf, tmp_path / "run")
    assert rc == 0 and "verdict: compatible" in out and "same meaning for every id" in out, out + err
    other = _hf_tokenizer(tmp_path / "other.json", docs[200:400])
    rc, _, err = mkd_in_process(capsys, *[c if not c.startswith("data.tokenizer=") else f"data.tokenizer={other}"
                                          for c in common], f"run.dir={tmp_path / 'run2'}")
    assert rc == 2 and "tokenizers differ" in err and "Traceback" not in err, err
    assert not (tmp_path / "run2").exists() and len(list((tmp_path / "cache" / "hf").iterdir())) == 1
    # The exported student tokenizes as its teacher: the teacher's settings beside its tokenizer.json.
    from transformers import AutoTokenizer

    mkd("convert", "mcore-to-hf", str(tmp_path / "run"), str(tmp_path / "student-hf"), env=env)
    student, teacher = (AutoTokenizer.from_pretrained(d) for d in (tmp_path / "student-hf", hf))
    text = docs[-1][:200]
    assert student(text)["input_ids"] == teacher(text)["input_ids"]
    assert student.model_max_length == 77 and student.eos_token_id == teacher.eos_token_id == 1
