import json
import os

import pytest

# One thread per rank: multi-process tests share the machine's 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKD_TEST", "1")

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
    """A tokenized real-text corpus: sentencepiece BPE 512, train/valid prefixes (90/10 by doc)."""
    from megatron_kd.data.preprocess import preprocess
    from megatron_kd.data.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("corpus")
    docs = pydoc_documents()
    valid = docs[::10]
    train = [d for i, d in enumerate(docs) if i % 10]
    for name, part in (("train", train), ("valid", valid)):
        with open(root / f"{name}.jsonl", "w") as f:
            for d in part:
                f.write(json.dumps({"text": d}) + "\n")
    (root / "tok.txt").write_text("\n".join(train))
    tok = train_sentencepiece([root / "tok.txt"], root, 512)
    out = {"dir": root, "tokenizer": str(tok), "train_docs": len(train)}
    for name in ("train", "valid"):
        out[name] = str(root / name)
        out[f"{name}_summary"] = preprocess([root / f"{name}.jsonl"], tok, root / name,
                                            workers=2, progress=False)
    return out


def corpus_overrides(corpus: dict) -> list[str]:
    """Recipe overrides that train the tiny model on `text_corpus`."""
    return ["data.mock=false", f"data.tokenizer={corpus['tokenizer']}",
            f"data.train=[{corpus['train']}]", f"data.valid={{indomain: {corpus['valid']}}}",
            "model.vocab_size=512"]
