"""Can a teacher distill into a student? Tokenizer meaning, vocabulary sizes, sequence length.

`check-pair` and every KD run use the same checks. A side is a megatron_kd checkpoint or run
dir, a Hugging Face directory, or a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_kd.errors import ConfigError


@dataclass
class Side:
    label: str
    tokenizer: Path | None
    vocab_size: int
    padded_vocab: int
    max_len: int
    seq_len: int | None = None


def describe(ref: str) -> Side:
    from megatron_kd.checkpoint.manager import read_state
    from megatron_kd.config import load_config
    from megatron_kd.convert.hf import hf_to_model_config, read_hf_config
    from megatron_kd.models.gpt import model_padded_vocab

    p = Path(ref)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "mkd_state.json").is_file():
        m = hf_to_model_config(read_hf_config(p), p.name)
        tok = next((p / n for n in ("tokenizer.json", "tokenizer.model") if (p / n).is_file()), None)
        return Side(f"{ref} (Hugging Face)", tok, m.vocab_size, model_padded_vocab(m, 1), m.max_position_embeddings)
    if p.is_dir():
        from megatron_kd.training.evaluate import resolve_checkpoint

        ckpt = resolve_checkpoint(p)
        state = read_state(ckpt)
        cfg = load_config(ckpt / "config.yaml", ["teacher.checkpoint=null"], purpose="model")
        name = (state.get("tokenizer") or {}).get("file")
        tok = ckpt / name if name and (ckpt / name).is_file() else None
        return Side(f"{ckpt} (checkpoint)", tok, cfg.model.vocab_size,
                    state.get("padded_vocab_size") or model_padded_vocab(cfg.model, 1),
                    cfg.model.max_position_embeddings, cfg.train.seq_length)
    cfg = load_config(ref, purpose="model")
    tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    return Side(f"{ref} (recipe)", tok, cfg.model.vocab_size,
                model_padded_vocab(cfg.model, cfg.parallel.tp), cfg.model.max_position_embeddings,
                cfg.train.seq_length)


def compare_tokenizers(a: Path, b: Path, vocab_size: int) -> str | None:
    """None when the two tokenizers mean the same (same piece for every id), else why not."""
    from megatron_kd.data.tokenizer import Tokenizer, file_sha256

    if file_sha256(a) == file_sha256(b):
        return None
    ta, tb = Tokenizer(a), Tokenizer(b)
    if ta.vocab_size != tb.vocab_size:
        return f"{ta.vocab_size} vs {tb.vocab_size} pieces"
    for i in range(min(vocab_size, ta.vocab_size)):
        pa, pb = ta.id_to_piece(i), tb.id_to_piece(i)
        if pa != pb:
            return f"id {i} is {pa!r} in {a} but {pb!r} in {b}"
    if ta.eod != tb.eod:
        return f"end-of-document id {ta.eod} vs {tb.eod}"
    return None


def check_sides(t: Side, s: Side) -> tuple[bool, list[str], list[str]]:
    """(ok, problems, notes)."""
    problems, notes = [], []
    if t.vocab_size != s.vocab_size:
        problems.append(f"true vocabulary: teacher {t.vocab_size} vs student {s.vocab_size}; "
                        f"fix: build the student with model.vocab_size={t.vocab_size} and the teacher's tokenizer")
    if t.tokenizer and s.tokenizer:
        why = compare_tokenizers(t.tokenizer, s.tokenizer, min(t.vocab_size, s.vocab_size))
        if why:
            problems.append(f"tokenizers differ ({why}); fix: tokenize the student's data with the "
                            f"teacher's tokenizer {t.tokenizer} (`mkd data preprocess --tokenizer ...`)")
        else:
            notes.append("tokenizers: same meaning for every id")
    else:
        notes.append("tokenizers: not both known, not compared")
    if t.padded_vocab != s.padded_vocab:
        notes.append(f"padded vocabulary: teacher {t.padded_vocab} vs student {s.padded_vocab} "
                     f"(handled: the student takes the teacher's {t.padded_vocab})")
    need = s.seq_len or s.max_len
    if need > t.max_len:
        problems.append(f"sequence length: the student uses {need} tokens but the teacher supports "
                        f"{t.max_len}; fix: train.seq_length<={t.max_len}")
    return not problems, problems, notes


def check_pair(teacher: str, student: str) -> tuple[bool, list[str]]:
    t, s = describe(teacher), describe(student)
    ok, problems, notes = check_sides(t, s)
    lines = [f"teacher: {t.label}: vocab {t.vocab_size} (padded {t.padded_vocab}), max length {t.max_len}",
             f"student: {s.label}: vocab {s.vocab_size} (padded {s.padded_vocab}), max length {s.max_len}"]
    lines += [f"  ok: {n}" for n in notes] + [f"  PROBLEM: {p}" for p in problems]
    lines.append("verdict: compatible" if ok else "verdict: NOT compatible")
    return ok, lines


def require_compatible(teacher: str, student_cfg) -> None:
    """The KD run's version of check-pair: the first problem as a ConfigError."""
    from megatron_kd.models.gpt import model_padded_vocab

    t = describe(teacher)
    s = Side("student", Path(student_cfg.data.tokenizer) if student_cfg.data.tokenizer else None,
             student_cfg.model.vocab_size, model_padded_vocab(student_cfg.model, student_cfg.parallel.tp),
             student_cfg.model.max_position_embeddings, student_cfg.train.seq_length)
    ok, problems, _ = check_sides(t, s)
    if not ok:
        raise ConfigError(f"teacher {teacher} cannot distill into this student: {problems[0]}")
