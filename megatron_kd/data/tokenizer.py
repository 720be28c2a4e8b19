"""Tokenizers: a sentencepiece model or a Hugging Face `tokenizer.json`, one interface.

The interface is what megatron-core's datasets read (vocab_size, eod, unique_identifiers) plus
encode/decode and a content fingerprint, so a checkpoint and a tokenized dataset can both say
which tokenizer made them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from megatron_kd.errors import ConfigError

# End-of-document candidates for tokenizer.json files, in order of preference.
_HF_EOD_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """Wraps a sentencepiece `.model` or a Hugging Face `tokenizer.json`."""

    def __init__(self, path: str | Path, eod_token: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(
                f"tokenizer '{path}' not found; train one with `mkd data train-tokenizer` or point "
                "data.tokenizer at a sentencepiece .model or a tokenizer.json")
        self.sha256 = file_sha256(self.path)
        if self.path.suffix == ".json":
            self._load_hf(eod_token)
        else:
            self._load_sentencepiece(eod_token)

    def _load_sentencepiece(self, eod_token):
        import sentencepiece as spm

        self.kind = "sentencepiece"
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"tokenizer '{self.path}' is not a sentencepiece model: {exc}") from exc
        self._sp = sp
        self.vocab_size = sp.GetPieceSize()
        eod = sp.PieceToId(eod_token) if eod_token else sp.eos_id()
        if eod < 0 or (eod_token and sp.IdToPiece(eod) != eod_token):
            raise ConfigError(f"tokenizer '{self.path}' has no end-of-document token "
                              f"{eod_token or '(eos)'}; retrain it with an eos piece")
        self.eod = eod
        self.bos = sp.bos_id() if sp.bos_id() >= 0 else None
        self.pad = sp.pad_id()

    def _load_hf(self, eod_token):
        from tokenizers import Tokenizer as HFTokenizer

        self.kind = "hf"
        try:
            tok = HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust side raises its own exception type
            raise ConfigError(f"tokenizer '{self.path}' is not a valid tokenizer.json: {exc}") from exc
        self._hf = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        candidates = [eod_token] if eod_token else list(_HF_EOD_CANDIDATES)
        ids = [tok.token_to_id(c) for c in candidates]
        found = [i for i in ids if i is not None]
        if not found:
            raise ConfigError(f"tokenizer '{self.path}' has none of the end-of-document tokens "
                              f"{candidates}; set data.eod_token to the one it uses")
        self.eod = found[0]
        self.bos = None
        self.pad = -1

    def encode(self, text: str) -> list[int]:
        if self.kind == "sentencepiece":
            return self._sp.EncodeAsIds(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        if self.kind == "sentencepiece":
            return self._sp.DecodeIds(list(ids))
        return self._hf.decode(list(ids))

    def id_to_piece(self, i: int) -> str:
        if self.kind == "sentencepiece":
            return self._sp.IdToPiece(i)
        return self._hf.id_to_token(i) or ""

    @property
    def eos(self) -> int:
        return self.eod

    @property
    def unique_identifiers(self) -> dict:
        """Part of megatron-core's dataset cache key."""
        return {"class": "megatron_kd.Tokenizer", "kind": self.kind, "sha256": self.sha256}

    def describe(self) -> dict:
        """What checkpoints and tokenized datasets record about the tokenizer."""
        return {"kind": self.kind, "file": self.path.name, "sha256": self.sha256,
                "vocab_size": self.vocab_size, "eod": self.eod}


def train_sentencepiece(inputs: list[Path], out_dir: Path, vocab_size: int,
                        model_type: str = "bpe", special_tokens: tuple[str, ...] = (),
                        max_sentences: int = 2_000_000) -> Path:
    """Train a byte-fallback sentencepiece model on text files; returns the .model path.

    Ids 0..3 are <pad>, <unk>, <s>, </s>; </s> is the end-of-document token.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ConfigError(f"--model-type must be bpe or unigram, got {model_type!r}")
    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"tokenizer training input not found: {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "tokenizer"
    try:
        spm.SentencePieceTrainer.Train(
            input=",".join(str(p) for p in inputs),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=0.9995,  # rare characters go through byte fallback
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            user_defined_symbols=list(special_tokens),
            normalization_rule_name="identity",  # keep text byte-exact ...
            remove_extra_whitespaces=False,  # ... including runs of spaces (code, verse)
            split_digits=True,
            input_sentence_size=max_sentences,
            max_sentence_length=1 << 16,
            shuffle_input_sentence=False,  # all sentences are used; a shuffle is seeded by time
            num_threads=1,  # deterministic merges: the same corpus gives the same tokenizer
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ConfigError(f"sentencepiece training failed: {str(exc).splitlines()[-1]}") from exc
    return prefix.with_suffix(".model")
