"""The tokenizer of an exported Hugging Face directory (`mkd convert mcore-to-hf`), so that
`AutoTokenizer.from_pretrained(DIR)` encodes as the run's tokenizer did.

A checkpoint carries the one tokenizer file its run read (`tokenizer.model` or `tokenizer.json`);
a converted Hugging Face checkpoint carries all of its source's files. What the export adds where
they are missing:

- `tokenizer.json` from a sentencepiece `tokenizer.model` (BPE or unigram, byte fallback, the
  model's own dummy-prefix and whitespace handling), written only once it encodes a sample text
  and every vocabulary piece to the same ids as sentencepiece itself;
- the source's `tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json`
  when they sit beside the run's `data.tokenizer` and that file is byte-identical to the
  checkpoint's (a student trained on its teacher's tokenizer.json gets the teacher's settings);
- otherwise those three written from the tokenizer: the end-of-document token is the EOS, and a
  BOS is added only where the source adds one (a tokenizer.json's post-processor; a sentencepiece
  model as megatron_kd encodes with it, for training and evaluation alike: never).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megatron_kd.convert.hf import TOKENIZER_FILES, check_links, copy_tokenizer_files
from megatron_kd.data.tokenizer import Tokenizer, file_sha256
from megatron_kd.errors import ConfigError

SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
# Text the converted sentencepiece tokenizer must encode as sentencepiece does: runs of spaces,
# tabs, new lines, digits, accents, scripts and an emoji outside a small vocabulary (byte fallback).
SAMPLE = ["Hello, world!  Two  spaces,\ta tab and\nnew lines\n\n", " leading space", "trailing  ",
          "3.14159 and 2026-12-07: 42 items", "naïve café déjà vu — «quotes»", "日本語のテキスト 🙂 Ω≈ç√",
          "def f(x):\n    return x ** 2  # code", ""]
_SPIECE_BLANK = "\u2581"  # sentencepiece's visible space


def export_tokenizer(ckpt: Path, stage: Path, source: str | None, eod_token: str | None,
                     max_length: int) -> list[str]:
    """The tokenizer files of the exported directory `stage`, from checkpoint `ckpt` whose run read
    the tokenizer `source` (its data.tokenizer); returns the names written."""
    names = copy_tokenizer_files(ckpt, stage)
    names += [n for n in _source_settings(ckpt, stage, source) if n not in names]
    converted = "tokenizer.json" not in names and "tokenizer.model" in names \
        and sentencepiece_to_json(stage / "tokenizer.model", stage / "tokenizer.json")
    if converted:
        names.append("tokenizer.json")
    if "tokenizer.json" in names and not any(n in names for n in SETTINGS_FILES):
        for name, value in tokenizer_settings(stage, eod_token, max_length, converted).items():
            (stage / name).write_text(json.dumps(value, indent=2) + "\n")
            names.append(name)
    return names


def _source_settings(ckpt: Path, stage: Path, source: str | None) -> list[str]:
    """The settings files beside the run's tokenizer file, copied when that file is still the
    checkpoint's (same bytes) and nothing there links outside its directory."""
    if not source:
        return []
    src = Path(source)
    mine = ckpt / src.name
    if src.name not in TOKENIZER_FILES or not (src.is_file() and mine.is_file()):
        return []
    try:
        check_links(src.parent)
    except ConfigError:
        return []
    if file_sha256(src) != file_sha256(mine):
        return []
    copied = []
    for name in SETTINGS_FILES:
        if (src.parent / name).is_file() and not (stage / name).exists():
            (stage / name).write_bytes((src.parent / name).read_bytes())
            copied.append(name)
    return copied


def tokenizer_settings(stage: Path, eod_token: str | None, max_length: int,
                       from_sentencepiece: bool) -> dict[str, dict]:
    """tokenizer_config.json, special_tokens_map.json and generation_config.json for the
    tokenizer.json in `stage` (`from_sentencepiece`: made here from its tokenizer.model): EOS the
    end-of-document token, BOS added as the source adds it."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(stage / "tokenizer.json"))
    if from_sentencepiece:  # the sentencepiece model's special pieces
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(stage / "tokenizer.model"))
        special = {"bos_token": sp.bos_id(), "unk_token": sp.unk_id(), "pad_token": sp.pad_id()}
        special = {k: sp.id_to_piece(i) for k, i in special.items() if i >= 0}
        eod = Tokenizer(stage / "tokenizer.model", eod_token).eod
        add_bos = add_eos = False
    else:
        eod = Tokenizer(stage / "tokenizer.json", eod_token).eod
        special, add_bos, add_eos = _added_specials(hf)
    special["eos_token"] = hf.id_to_token(eod)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": add_bos,
              "add_eos_token": add_eos, "model_max_length": max_length, "clean_up_tokenization_spaces": False}
    generation = {"eos_token_id": eod}
    if "bos_token" in special:
        generation["bos_token_id"] = hf.token_to_id(special["bos_token"])
    return {"tokenizer_config.json": config, "special_tokens_map.json": special,
            "generation_config.json": generation}


def _added_specials(hf) -> tuple[dict, bool, bool]:
    """The tokens a tokenizer.json's post-processor puts around a text: ({bos_token, eos_token
    where added}, adds a BOS, adds an EOS)."""
    plain = hf.encode("a", add_special_tokens=False).ids
    full = hf.encode("a").ids
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    before, after = full[:start], full[start + len(plain):]
    special = {}
    if before:
        special["bos_token"] = hf.id_to_token(before[-1])
    return special, bool(before), bool(after)


def sentencepiece_to_json(model: Path, out: Path) -> bool:
    """Write `out`, the tokenizer.json form of the sentencepiece `model`, if it encodes SAMPLE and
    every piece as sentencepiece does; else write nothing, say why, and return False
    (transformers then converts tokenizer.model itself)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    try:
        tok = _build(model, sp)
    except (ValueError, KeyError) as exc:
        print(f"note: tokenizer.json not written: {model.name} cannot be expressed as one ({exc})", file=sys.stderr)
        return False
    pieces = [sp.id_to_piece(i).replace(_SPIECE_BLANK, " ") for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))]
    texts = SAMPLE + [" ".join(pieces[i:i + 64]) for i in range(0, len(pieces), 64)] + pieces
    expected = sp.encode(texts)
    got = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    wrong = [t for t, e, g in zip(texts, expected, got) if e != g]
    if wrong:
        print(f"note: tokenizer.json not written: its form of {model.name} encodes {len(wrong)} of {len(texts)} "
              f"sample texts differently from sentencepiece (e.g. {wrong[0][:40]!r})", file=sys.stderr)
        return False
    tok.save(str(out))
    return True


def _build(model: Path, sp):
    """The tokenizers.Tokenizer of a sentencepiece BPE or unigram model (read from its protobuf)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    norm = proto.normalizer_spec
    if norm.precompiled_charsmap or norm.remove_extra_whitespaces or not norm.escape_whitespaces:
        raise ValueError(f"normalization {norm.name!r} with its character map or whitespace folding")
    kinds = proto.SentencePiece
    vocab = [(p.piece, p.score) for p in proto.pieces]
    unk = sp.unk_id()
    if proto.trainer_spec.model_type == proto.trainer_spec.BPE:
        ids = {piece: i for i, (piece, _) in enumerate(vocab)}
        mergeable = {p.piece for p in proto.pieces if p.type == kinds.NORMAL}
        merges = sorted((ids[piece], ids[piece[:k]], piece[:k], piece[k:]) for piece in mergeable
                        for k in range(1, len(piece)) if piece[:k] in mergeable and piece[k:] in mergeable)
        bpe = models.BPE({piece: i for piece, i in ids.items()}, [(a, b) for *_, a, b in merges],
                         unk_token=vocab[unk][0] if unk >= 0 else None, fuse_unk=True,
                         byte_fallback=proto.trainer_spec.byte_fallback)
        tok = Tokenizer(bpe)
    elif proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM:
        tok = Tokenizer(models.Unigram(vocab, unk if unk >= 0 else None, proto.trainer_spec.byte_fallback))
    else:
        raise ValueError("a model type other than BPE or unigram")
    blank = [normalizers.Replace(" ", _SPIECE_BLANK)]
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend(_SPIECE_BLANK)] if norm.add_dummy_prefix else [])
                                          + blank)
    tok.decoder = decoders.Sequence([decoders.Replace(_SPIECE_BLANK, " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []))
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces
                            if p.type in (kinds.CONTROL, kinds.UNKNOWN)])
    tok.add_tokens([AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces
                    if p.type == kinds.USER_DEFINED])
    return tok
