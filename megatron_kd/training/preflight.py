"""Checks a training run makes before any process starts (so a 64-rank job fails in seconds,
with one line, instead of after the process groups and models are up): the run directory is
this run's and writable, every data prefix is whole and made with the model's tokenizer, and
the checkpoint it would resume from or load is complete. Reads only; changes nothing.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

from megatron_kd.checkpoint.manager import checkpoint_root
from megatron_kd.checkpoint.refs import latest_checkpoint, verify_checkpoint
from megatron_kd.config.schema import RunConfig
from megatron_kd.data.datasets import check_prefix, load_tokenizer
from megatron_kd.distill.teacher import check_same_teacher
from megatron_kd.errors import ConfigError
from megatron_kd.training.metrics import import_wandb
from megatron_kd.training.run_dir import check_run_dir


def check_writable(directory: Path, what: str) -> None:
    """`directory` exists or can be created, and files can be written in it. A real probe (a
    temporary file), because permission bits say nothing for root or on network file systems."""
    directory = Path(directory).absolute()
    created = []  # the directories the probe makes, removed again: a check changes nothing
    d = directory
    while not d.exists() and d != d.parent:
        created.append(d)
        d = d.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".mkd-write-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise ConfigError(f"{what} {directory} is not writable ({reason}); choose a directory "
                          "you can write to") from exc
    finally:
        for c in created:  # deepest first
            try:
                c.rmdir()
            except OSError:
                break


def check_data(cfg: RunConfig) -> None:
    """Every train / validation prefix: present, .idx and .bin consistent, not empty, tokenized
    with data.tokenizer (see datasets.check_prefix)."""
    if cfg.data.mock:
        return
    tokenizer = load_tokenizer(cfg)
    for prefix in cfg.data.train:
        check_prefix(prefix, tokenizer, "data.train", token_ids=True, trust_unverified=cfg.data.trust_unverified)
    for name, prefix in cfg.data.valid.items():
        check_prefix(prefix, tokenizer, f"data.valid.{name}", token_ids=True,
                     trust_unverified=cfg.data.trust_unverified)


def preflight_train(cfg: RunConfig, overwrite: bool) -> None:
    if cfg.logging.wandb.project:  # before any process starts: the optional package is there
        import_wandb()
    check_run_dir(cfg, overwrite, delete=False)
    check_writable(Path(cfg.run.dir), "run.dir")
    check_data(cfg)
    if cfg.checkpoint.resume and not overwrite:
        latest = latest_checkpoint(checkpoint_root(cfg))
        if latest is not None:
            check_same_teacher(cfg, verify_checkpoint(latest), latest)
    if cfg.checkpoint.load:
        if not Path(cfg.checkpoint.load).is_dir():
            raise ConfigError(f"checkpoint.load '{cfg.checkpoint.load}' does not exist; point at a "
                              "checkpoint directory (RUN_DIR/checkpoints/NAME)")
        verify_checkpoint(Path(cfg.checkpoint.load))
