"""The teacher of a KD run: which checkpoint, which model, and can it teach this student.

Depends only on checkpoint references, the config and the models: `resolve_teacher` checks a
KD run's teacher before any process group starts (a run never trains against a teacher it
cannot load); `check_pair` (`mkd check-pair`) and every KD run make the same tokenizer,
vocabulary and sequence-length checks. A side is a megatron_kd checkpoint or run dir, a Hugging
Face directory, or a recipe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from megatron_kd.checkpoint import megatron_lm
from megatron_kd.checkpoint.refs import (
    is_checkpoint,
    is_hf_dir,
    read_state,
    resolve_checkpoint,
    saved_config,
    saved_model,
    verify_checkpoint,
    without_location,
)
from megatron_kd.config import load_config, padded_vocab
from megatron_kd.config.loader import build_dataclass, load_recipe_dict, resolve_recipe_path
from megatron_kd.config.schema import ModelConfig, RunConfig
from megatron_kd.config.validate import validate_layout, validate_moe
from megatron_kd.data.tokenizer import Tokenizer, file_sha256
from megatron_kd.errors import ConfigError
from megatron_kd.models.hf_config import hf_to_model_config, read_hf_config

log = logging.getLogger("megatron_kd.distill")

_ARCHITECTURE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "num_query_groups", "kv_channels", "vocab_size", "untie_embeddings_and_output_weights",
                 "qk_layernorm")
# what an MoE teacher computes; its training-only fields (aux/z loss, dispatcher) may differ
_MOE_ARCHITECTURE = ("num_experts", "router_topk", "ffn_hidden_size", "shared_expert_ffn_hidden_size",
                     "layer_freq", "score_function", "pre_softmax", "capacity_factor")


def architecture_diff(recipe: ModelConfig, saved: ModelConfig) -> list[str]:
    """The architecture fields where a teacher recipe and its checkpoint differ."""
    diff = [f"{a}: recipe {getattr(recipe, a)} vs checkpoint {getattr(saved, a)}"
            for a in _ARCHITECTURE if getattr(recipe, a) != getattr(saved, a)]
    return diff + [f"moe.{a}: recipe {getattr(recipe.moe, a)} vs checkpoint {getattr(saved.moe, a)}"
                   for a in _MOE_ARCHITECTURE if getattr(recipe.moe, a) != getattr(saved.moe, a)]


def resolve_teacher(cfg: RunConfig, check: bool = True) -> tuple[Path, ModelConfig, dict]:
    """(checkpoint dir, teacher ModelConfig with its padded vocabulary, the checkpoint's state).

    `check=True` (once per launch, before any process starts) also verifies the checkpoint's
    files and that the teacher can distill into this student (tokenizer meaning included);
    the ranks of a checked launch resolve with `check=False`."""
    ref = cfg.teacher.checkpoint
    if not Path(ref).exists():
        raise ConfigError(f"teacher.checkpoint '{ref}' does not exist; train the teacher first "
                          "(`mkd train ...`) or point at its run dir / checkpoint / HF directory")
    ckpt = teacher_checkpoint(cfg)
    state = verify_checkpoint(ckpt) if check else read_state(ckpt)
    saved = saved_model(ckpt, state)
    if cfg.teacher.model:
        recipe = resolve_recipe_path(cfg.teacher.model)
        teacher = build_dataclass(ModelConfig, load_recipe_dict(recipe).get("model", {}), "model", str(recipe))
        diff = architecture_diff(teacher, saved)
        if diff:
            raise ConfigError(f"teacher checkpoint {ckpt} is another architecture than "
                              f"teacher.model={cfg.teacher.model} ({'; '.join(diff)}); point "
                              "teacher.model at the teacher's recipe or drop it")
        teacher.padded_vocab_size = saved.padded_vocab_size
    else:
        teacher = saved
    validate_layout(teacher, cfg.parallel, key="the teacher's model")  # split over the student's layout
    validate_moe(teacher, cfg.parallel, key="the teacher's model", other_has_experts=cfg.model.moe.num_experts > 0)
    if check:
        require_compatible(str(ckpt), cfg)  # tokenizer meaning, vocabulary, sequence length
    return ckpt, teacher, state


def teacher_checkpoint(cfg: RunConfig) -> Path:
    """The megatron_kd checkpoint teacher.checkpoint means; a Megatron-LM directory is converted
    with teacher.model's architecture where one is given (its true vocabulary: Megatron-LM's
    args hold only the padded one), else with its saved args."""
    ref = cfg.teacher.checkpoint
    if megatron_lm.is_megatron_lm_dir(ref) and not is_checkpoint(ref):
        return megatron_lm.ensure_converted(ref, cfg.teacher.model)
    return resolve_checkpoint(ref)


def teacher_model(cfg: RunConfig) -> ModelConfig | None:
    """The teacher's ModelConfig for planning (no file checks): teacher.model's recipe, else the
    checkpoint's saved model (padded vocabulary applied); None without a teacher."""
    if cfg.teacher.model:
        return load_config(cfg.teacher.model, purpose="model").model
    if cfg.teacher.checkpoint:
        return saved_model(teacher_checkpoint(cfg))
    return None


def teacher_identity(cfg: RunConfig) -> dict | None:
    """What a KD run learns from, recorded in each of its checkpoints: the teacher checkpoint
    (resolved: a run dir means its latest checkpoint), its step and state checksum; or the
    teacher cache and the teacher it was made from. None without a teacher."""
    if cfg.teacher.cache:
        from megatron_kd.distill.cache import read_manifest  # lazy: the cache reader needs torch

        fp = read_manifest(Path(cfg.teacher.cache))["fingerprint"]
        return {"cache": str(Path(cfg.teacher.cache).resolve()), "teacher": fp.get("teacher"),
                "top_k": fp.get("top_k"), "sampled": bool(fp.get("sampled")), "dtype": fp.get("dtype", "fp32")}
    if cfg.teacher.unigram:
        from megatron_kd.distill.unigram import unigram_identity, unigram_log_probs  # lazy: unigram runs only

        return unigram_identity(unigram_log_probs(cfg.data.train, cfg.data.train_weights, cfg.model.vocab_size))
    if cfg.teacher.checkpoint:
        ckpt = teacher_checkpoint(cfg)
        state = read_state(ckpt)
        return {"checkpoint": str(ckpt.resolve()), "step": state["step"], "state_crc": state["state_crc"]}
    return None


def _describe_identity(ident: dict | None) -> str:
    if not ident:
        return "no teacher"
    if "unigram" in ident:
        return f"the unigram teacher ({ident['unigram']})"
    if "cache" in ident:
        t = ident.get("teacher") or {}
        return f"teacher cache {ident['cache']} (of {t.get('checkpoint', '?')} at step {t.get('step', '?')})"
    return f"{ident['checkpoint']} at step {ident['step']} ({ident['state_crc']})"


def _same_teacher(saved: dict | None, now: dict | None) -> bool:
    """The same teacher wherever it lies now (checkpoint.refs.without_location). A cache recorded
    before its value kind was (sampled draws or top-k, its dtype) is compared as it was then,
    its path included: that record cannot tell a bf16 cache of the same teacher from its own."""
    if isinstance(saved, dict) and isinstance(now, dict) and "cache" in saved and "sampled" not in saved:
        return saved == {k: now.get(k) for k in saved}  # as then: by its path too (the kind is not known)
    return without_location(saved) == without_location(now)


def check_same_teacher(cfg: RunConfig, saved_state: dict, ckpt: Path, now: dict | None = None) -> None:
    """A run resumes against the teacher its checkpoint was trained with, or not at all: a
    teacher retrained in place, another cache, or a teacher added or removed is one line naming
    both. Checkpoints written before the record existed (no 'teacher' key) are let through. `now`:
    this run's teacher identity when the caller has read it already (it reads the teacher's files)."""
    if "teacher" not in saved_state:
        return
    saved = saved_state["teacher"]
    now = teacher_identity(cfg) if now is None else now
    if not _same_teacher(saved, now):
        hint = (f"set teacher.checkpoint={saved['checkpoint']} to resume against the teacher it started with, "
                if saved and "checkpoint" in saved else "")
        raise ConfigError(f"checkpoint {ckpt} was trained against {_describe_identity(saved)}, but this run "
                          f"names {_describe_identity(now)}; {hint}or start a new run.dir (or --overwrite)")


def aligned_padded_vocab(student_padded: int, teacher_padded: int, tp: int) -> int:
    """The padded vocabulary both models of a KD run are built with: their logits must be
    sharded alike, so the student takes the teacher's when theirs differ (the extra columns are
    padding and never count)."""
    if teacher_padded == student_padded:
        return student_padded
    if teacher_padded % tp:
        raise ConfigError(f"the teacher's padded vocabulary {teacher_padded} is not divisible by "
                          f"parallel.tp={tp}; use a tp that divides {teacher_padded}")
    log.info("student padded vocabulary %d -> %d to match the teacher", student_padded, teacher_padded)
    return teacher_padded


# --- can this teacher distill into this student? -------------------------------------------

@dataclass
class Side:
    label: str
    tokenizer: Path | None
    vocab_size: int
    padded_vocab: int
    max_len: int
    seq_len: int | None = None


def describe(ref: str) -> Side:
    p = Path(ref)
    if is_hf_dir(p):  # read its config.json directly: no conversion needed to compare
        m = hf_to_model_config(read_hf_config(p), p.name)
        tok = next((p / n for n in ("tokenizer.json", "tokenizer.model") if (p / n).is_file()), None)
        return Side(f"{ref} (Hugging Face)", tok, m.vocab_size, padded_vocab(m, 1), m.max_position_embeddings)
    if p.is_dir():
        ckpt = resolve_checkpoint(p)
        state = read_state(ckpt)
        cfg = saved_config(ckpt, ["teacher.checkpoint=null"], purpose="model", state=state)
        name = (state.get("tokenizer") or {}).get("file")
        tok = ckpt / name if name and (ckpt / name).is_file() else None
        return Side(f"{ckpt} (checkpoint)", tok, cfg.model.vocab_size, padded_vocab(cfg.model, 1),
                    cfg.model.max_position_embeddings, cfg.train.seq_length)
    cfg = load_config(ref, purpose="model")
    tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    return Side(f"{ref} (recipe)", tok, cfg.model.vocab_size, padded_vocab(cfg.model, cfg.parallel.tp),
                cfg.model.max_position_embeddings, cfg.train.seq_length)


def compare_tokenizers(a: Path, b: Path, vocab_size: int) -> str | None:
    """None when the two tokenizers mean the same (same piece for every id), else why not."""
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


def require_compatible(teacher: str, student_cfg: RunConfig) -> None:
    """The KD run's version of check-pair: the first problem as a ConfigError."""
    t = describe(teacher)
    s = Side("student", Path(student_cfg.data.tokenizer) if student_cfg.data.tokenizer else None,
             student_cfg.model.vocab_size, padded_vocab(student_cfg.model, student_cfg.parallel.tp),
             student_cfg.model.max_position_embeddings, student_cfg.train.seq_length)
    ok, problems, _ = check_sides(t, s)
    if not ok:
        raise ConfigError(f"teacher {teacher} cannot distill into this student: {problems[0]}")
