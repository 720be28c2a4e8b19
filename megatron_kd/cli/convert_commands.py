"""`mkd convert ...` and `mkd check-pair`."""

from __future__ import annotations

from pathlib import Path


def add_convert_parsers(sub) -> None:
    p = sub.add_parser("convert", help="Hugging Face (Llama, Qwen3, Qwen3-MoE, Mixtral) and Megatron-LM <-> "
                                       "megatron_kd checkpoints")
    csub = p.add_subparsers(dest="convert_command", metavar="DIRECTION", required=True)
    a = csub.add_parser("hf-to-mcore", help="HF directory -> megatron_kd checkpoint (loads at any TP/PP)")
    a.add_argument("hf_dir")
    a.add_argument("out_dir")
    a.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="parameter dtype (default: the HF config's torch_dtype)")
    a.set_defaults(func=cmd_hf_to_mcore)
    b = csub.add_parser("mcore-to-hf", help="megatron_kd checkpoint (or run dir) -> HF directory")
    b.add_argument("checkpoint")
    b.add_argument("out_dir")
    b.add_argument("--shard-size-gb", type=float, default=2.0)
    b.set_defaults(func=cmd_mcore_to_hf)
    m = csub.add_parser("megatron-lm-to-mcore",
                        help="Megatron-LM / Bridge checkpoint (save or iter_* dir) -> megatron_kd checkpoint")
    m.add_argument("src")
    m.add_argument("out_dir")
    m.add_argument("--model", default=None,
                   help="model recipe, where the checkpoint's own args or run_config.yaml cannot be read")
    m.set_defaults(func=cmd_megatron_lm_to_mcore)
    e = csub.add_parser("mcore-to-megatron-lm", help="megatron_kd checkpoint (or run dir) -> Megatron-LM save dir")
    e.add_argument("checkpoint")
    e.add_argument("out_dir")
    e.set_defaults(func=cmd_mcore_to_megatron_lm)

    c = sub.add_parser("check-pair", help="can TEACHER distill into STUDENT? (tokenizer, vocab, length)")
    c.add_argument("teacher", help="checkpoint, run dir, HF dir or recipe")
    c.add_argument("student", help="checkpoint, run dir, HF dir or recipe")
    c.set_defaults(func=cmd_check_pair)


def _quiet():
    from megatron_kd.cli.logs import setup_logging

    setup_logging("info", 0)


def cmd_hf_to_mcore(args) -> int:
    from megatron_kd.convert.run import hf_to_mcore

    out = _converted(hf_to_mcore, Path(args.hf_dir), Path(args.out_dir), args.dtype)
    print(f"wrote {out} (megatron-core dist checkpoint; model recipe {out / 'model.yaml'})")
    print(f"use it as a teacher:  teacher.checkpoint={out} teacher.model={out / 'model.yaml'}")
    return 0


def _converted(convert, *args):
    """Run a converter (it may start megatron-core's process groups) with the console quiet,
    tearing the groups down whatever happens; returns what it wrote."""
    from megatron_kd.runtime.distributed import shutdown

    _quiet()
    try:
        return convert(*args)
    finally:
        shutdown(barrier=False)


def cmd_mcore_to_hf(args) -> int:
    from megatron_kd.convert.run import mcore_to_hf

    out = _converted(mcore_to_hf, Path(args.checkpoint), Path(args.out_dir), int(args.shard_size_gb * (1 << 30)))
    print(f"wrote {out} (config.json, safetensors, tokenizer files)")
    return 0


def cmd_megatron_lm_to_mcore(args) -> int:
    from megatron_kd.convert.megatron_lm import megatron_lm_to_mcore

    out = _converted(megatron_lm_to_mcore, Path(args.src), Path(args.out_dir), args.model)
    print(f"wrote {out} (megatron-core dist checkpoint; model recipe {out / 'model.yaml'})")
    return 0


def cmd_mcore_to_megatron_lm(args) -> int:
    from megatron_kd.convert.megatron_lm import mcore_to_megatron_lm

    out = _converted(mcore_to_megatron_lm, Path(args.checkpoint), Path(args.out_dir))
    print(f"wrote {out} (Megatron-LM torch_dist save dir; load it with --load {out} --no-load-optim "
          "--no-load-rng)")
    return 0


def cmd_check_pair(args) -> int:
    from megatron_kd.distill.teacher import check_pair

    ok, lines = check_pair(args.teacher, args.student)
    for line in lines:
        print(line)
    return 0 if ok else 4
