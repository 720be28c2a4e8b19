"""`mkd convert ...` and `mkd check-pair`."""

from __future__ import annotations

from pathlib import Path


def add_convert_parsers(sub) -> None:
    p = sub.add_parser("convert", help="Hugging Face <-> megatron-core checkpoints (Llama, Qwen3)")
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

    c = sub.add_parser("check-pair", help="can TEACHER distill into STUDENT? (tokenizer, vocab, length)")
    c.add_argument("teacher", help="checkpoint, run dir, HF dir or recipe")
    c.add_argument("student", help="checkpoint, run dir, HF dir or recipe")
    c.set_defaults(func=cmd_check_pair)


def _quiet():
    from megatron_kd.cli.logs import setup_logging

    setup_logging("info", 0)


def cmd_hf_to_mcore(args) -> int:
    from megatron_kd.convert.run import hf_to_mcore
    from megatron_kd.runtime.distributed import shutdown

    _quiet()
    try:
        out = hf_to_mcore(Path(args.hf_dir), Path(args.out_dir), args.dtype)
    finally:
        shutdown(barrier=False)
    print(f"wrote {out} (megatron-core dist checkpoint; model recipe {out / 'model.yaml'})")
    print(f"use it as a teacher:  teacher.checkpoint={out} teacher.model={out / 'model.yaml'}")
    return 0


def cmd_mcore_to_hf(args) -> int:
    from megatron_kd.convert.run import mcore_to_hf
    from megatron_kd.runtime.distributed import shutdown

    _quiet()
    try:
        out = mcore_to_hf(Path(args.checkpoint), Path(args.out_dir), int(args.shard_size_gb * (1 << 30)))
    finally:
        shutdown(barrier=False)
    print(f"wrote {out} (config.json, safetensors, tokenizer files)")
    return 0


def cmd_check_pair(args) -> int:
    from megatron_kd.distill.teacher import check_pair

    ok, lines = check_pair(args.teacher, args.student)
    for line in lines:
        print(line)
    return 0 if ok else 4
