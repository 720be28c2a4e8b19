"""Where metrics go: the console line, RUN_DIR/metrics.jsonl and TensorBoard (rank 0 only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("megatron_kd.train")


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.tb = None
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

    def console(self, step: int, total: int, tokens: int, m: dict, tok_per_s: float, eta_s: float,
                extra: str = ""):
        if not self.enabled:
            return
        kd = ""
        if "kd loss" in m:  # distillation: the two terms and the mix
            kd = f" (lm {m['lm loss']:.4f}, kd {m['kd loss']:.4f}, alpha {m['alpha']:.3g})"
        log.info("step %d/%d | tokens %d | loss %.4f%s | lr %.3e | grad norm %.3f%s | %.0f tok/s | ETA %s",
                 step, total, tokens, m["loss"], kd, m["lr"], m["grad_norm"], extra, tok_per_s,
                 _fmt_eta(eta_s))

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
