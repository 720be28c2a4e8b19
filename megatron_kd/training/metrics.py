"""Where metrics go: the console line, RUN_DIR/metrics.jsonl, TensorBoard and, when
logging.wandb.project is set, Weights & Biases (rank 0 only)."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from megatron_kd.config.schema import WandbConfig
from megatron_kd.console import first_line, hms
from megatron_kd.errors import SetupError
from megatron_kd.files import write_text_atomic

log = logging.getLogger("megatron_kd.train")


def import_wandb():
    """The wandb package, or one line saying how to get it (it is optional)."""
    try:
        import wandb  # lazy: optional, only when logging.wandb.project is set
    except ImportError as exc:
        raise SetupError("logging.wandb.project is set but the wandb package is not installed: pip install "
                         "wandb (or unset logging.wandb.project)") from exc
    return wandb


def start_wandb(cfg: WandbConfig, run_dir: Path, run_name: str, config: dict):
    """A W&B run for this run directory: one run id drawn on the first start and kept in
    RUN_DIR/wandb/run_id (so a resume continues it and `--overwrite`, which deletes RUN_DIR/wandb,
    starts a new one); offline runs under RUN_DIR/wandb. Charts use the training `step` as their
    x-axis (define_metric), so the steps a resumed run logs again are kept, not dropped as
    W&B drops a `step=` lower than one it has seen."""
    wandb = import_wandb()
    id_file = run_dir / "wandb" / "run_id"
    id_file.parent.mkdir(parents=True, exist_ok=True)
    if not id_file.is_file():
        write_text_atomic(id_file, secrets.token_hex(8))
    run_id = id_file.read_text().strip()
    try:
        run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_name, group=cfg.group,
                         tags=list(cfg.tags) or None, mode=cfg.mode, dir=str(run_dir), id=run_id, resume="allow",
                         config={**config, "point": dict(cfg.point)})
    except Exception as exc:  # no login, no network, a bad entity: one line, not wandb's traceback
        first = first_line(exc, 300)
        raise SetupError(f"W&B could not start a run ({first}); run `wandb login`, or set "
                         "logging.wandb.mode=offline (sync later with `wandb sync`)") from exc
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


def loss_field(m: dict) -> str:
    """The step line's loss, named: a distillation run optimises a mix (kd.mix, its first log
    line) of the student's CE and the T²-scaled KD term, which at α = 1 is the KD term alone, far
    below the validation CE printed beside it; a run without a teacher optimises the CE itself.
    ASCII only: a cluster's job log may be written under a C locale."""
    if "kd loss" not in m:
        return f"loss (train CE) {m['loss']:.4f}"
    alpha = (f"alpha_eff {m['kd/alpha_effective']:.3g} (kd.auto, ceiling {m['alpha']:.3g})"
             if "kd/alpha_effective" in m else f"alpha {m['alpha']:.3g}")
    return (f"loss (train objective: mix of CE and T^2*KD) {m['loss']:.4f} "
            f"(CE {m['lm loss']:.4f}, T^2*KD {m['kd loss']:.4f}, {alpha})")


class MetricsWriter:
    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool, wandb: WandbConfig | None = None,
                 run_name: str = "", run_config: dict | None = None):
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        self.failed = False  # set when the run ends in an error: W&B records a non-zero exit
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb is not None and wandb.project:
            self.wandb = start_wandb(wandb, run_dir, run_name, run_config or {})

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:  # the same scalars as TensorBoard, against the same step
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))})

    def console(self, step: int, total: int, tokens: int, m: dict, tok_per_s: float, eta_s: float,
                extra: str = ""):
        if not self.enabled:
            return
        log.info("step %d/%d | tokens %d | %s | lr %.3e | grad norm %.3f%s | %.0f tok/s | ETA %s",
                 step, total, tokens, loss_field(m), m["lr"], m["grad_norm"], extra, tok_per_s, hms(eta_s))

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if self.failed else 0)
