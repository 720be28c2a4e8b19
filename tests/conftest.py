import json
import os

import pytest

# One thread per rank: multi-process tests share the machine's 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# scripts/gpu_check.sh runs the numerics tests on CUDA: every tensor a test makes without naming a
# device goes there (the float64 references included).
if os.environ.get("MKD_TEST_DEVICE"):
    import torch

    torch.set_default_device(os.environ["MKD_TEST_DEVICE"])


def pytest_configure(config):
    from tests.scheduling import register

    register(config)


def pytest_collection_modifyitems(config, items):
    from tests.scheduling import longest_modules_first

    longest_modules_first(items)  # with --no-loadscope-reorder (Makefile): xdist keeps this order


def pydoc_documents() -> list[str]:
    """Real English text that ships with every CPython: the pydoc topic help (~0.8 MB)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics) if len(topics[k]) > 200]


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> dict:
    """A tokenized real-text corpus: sentencepiece BPE 512, train/valid prefixes (90/10 by doc).
    Built once per test session (the xdist workers share it); read it, never write into it."""
    from tests.helpers import build_once

    with build_once(tmp_path_factory, "corpus") as (root, built):
        if not built:
            _build_text_corpus(root)
    out = json.loads((root / "corpus.json").read_text())
    return {**out, "dir": root}


def _build_text_corpus(root) -> None:
    from megatron_kd.data.preprocess import preprocess
    from megatron_kd.data.tokenizer import train_sentencepiece

    root.mkdir(parents=True)
    docs = pydoc_documents()
    valid = docs[::10]
    train = [d for i, d in enumerate(docs) if i % 10]
    for name, part in (("train", train), ("valid", valid)):
        with open(root / f"{name}.jsonl", "w") as f:
            for d in part:
                f.write(json.dumps({"text": d}) + "\n")
    (root / "tok.txt").write_text("\n".join(train))
    tok = train_sentencepiece([root / "tok.txt"], root, 512)
    out = {"tokenizer": str(tok), "train_docs": len(train)}
    for name in ("train", "valid"):
        out[name] = str(root / name)
        preprocess([root / f"{name}.jsonl"], tok, root / name, workers=2, progress=False)
    (root / "corpus.json").write_text(json.dumps(out))


def corpus_overrides(corpus: dict) -> list[str]:
    """Recipe overrides that train the tiny model on `text_corpus`."""
    return ["data.mock=false", f"data.tokenizer={corpus['tokenizer']}",
            f"data.train=[{corpus['train']}]", f"data.valid={{indomain: {corpus['valid']}}}",
            "model.vocab_size=512"]


# The teachers the end-to-end tests distil from, each trained once per test session (see
# tests/helpers.py trained_teacher) whichever modules and workers use it.
MOCK_TEACHER = ("train/tiny-mock", "train.steps=3", "run.seed=99", "model.num_layers=4",
                "train.global_batch_size=8")


def text_teacher_overrides(corpus: dict) -> list[str]:
    """A 4-layer teacher pretrained for 40 steps on the real-text corpus: better than an untrained
    student on the same batch, and its KL from a student drops under KD."""
    return [*corpus_overrides(corpus), "train.global_batch_size=8", "train.micro_batch_size=4",
            "train.seq_length=32", "train.lr=3e-3", "train.warmup_steps=2", "logging.eval_samples=16",
            "train.steps=40", "model.num_layers=4", "model.hidden_size=96", "model.ffn_hidden_size=256"]


@pytest.fixture(scope="session")
def mock_teacher(tmp_path_factory):
    """A 4-layer tiny teacher on mock data (3 steps): it splits into PP=2 stages and PP=2 x VPP=2
    chunks, and serves any 2- or 4-layer tiny student."""
    from tests.helpers import trained_teacher

    return trained_teacher(tmp_path_factory, *MOCK_TEACHER)


@pytest.fixture(scope="session")
def text_teacher(text_corpus, tmp_path_factory):
    """The text_teacher_overrides teacher's run directory."""
    from tests.helpers import trained_teacher

    return trained_teacher(tmp_path_factory, "train/tiny-mock", *text_teacher_overrides(text_corpus))
