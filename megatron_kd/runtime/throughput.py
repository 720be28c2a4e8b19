"""Throughput accounting of a training step: tokens/s per GPU, model TFLOP/s per GPU (the
student's training FLOPs plus the teacher's forward FLOPs, attention included: the one compute
currency of models/flops.py, `step_flops_per_token`, the report's and advise's count) and MFU
against the device's peak; and `mkd train --profile-steps N`:
the share of the step spent in the teacher's forward and in the KD loss (CUDA events on a GPU,
the wall clock on CPU)."""

from __future__ import annotations

import contextlib
import time

import torch

# Dense peak TFLOP/s per GPU (no sparsity), from NVIDIA's data sheets: (bf16/fp16, fp8).
PEAK_TFLOPS = {"H100 SXM": (989.4, 1978.9), "H100 PCIe": (756.0, 1513.0), "H100 NVL": (835.0, 1671.0),
               "H200": (989.4, 1978.9), "A100": (312.0, None)}


def peak_tflops(device_name: str | None, dtype: str, fp8: bool) -> float | None:
    """The device's dense peak for the run's math (None: unknown device, or a CPU)."""
    if not device_name:
        return None
    name = device_name.upper()
    if "H200" in name:
        key = "H200"
    elif "H100" in name:
        key = "H100 PCIe" if "PCIE" in name else ("H100 NVL" if "NVL" in name else "H100 SXM")
    elif "A100" in name:
        key = "A100"
    else:
        return None
    bf16, f8 = PEAK_TFLOPS[key]
    if dtype == "fp32":
        return None  # TF32 peaks depend on settings; no MFU for fp32 runs
    return f8 if fp8 and f8 else bf16


def device_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def step_throughput(tokens: int, seconds: float, world: int, flops_per_token: float,
                    peak: float | None) -> dict:
    """{tokens_per_s_per_gpu, tflops_per_gpu, mfu (None without a peak)}; `flops_per_token` from
    models/flops.py's `step_flops_per_token`."""
    per_gpu = tokens / seconds / world
    tflops = per_gpu * flops_per_token / 1e12
    return {"tokens_per_s_per_gpu": per_gpu, "tflops_per_gpu": tflops,
            "mfu": tflops / peak if peak else None}


class Profiler:
    """Named sections timed over a few steps; off unless started (then every section costs a
    CUDA event pair, or two clock reads)."""

    def __init__(self):
        self.active = False
        self._open: dict[str, list] = {}
        self.totals: dict[str, float] = {}

    def start(self) -> None:
        self.active, self._open, self.totals = True, {}, {}

    @contextlib.contextmanager
    def section(self, name: str):
        if not self.active:
            yield
            return
        if torch.cuda.is_available():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            try:
                yield
            finally:
                end.record()
                self._open.setdefault(name, []).append((begin, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def stop(self) -> dict[str, float]:
        """Seconds per section since start()."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            for name, pairs in self._open.items():
                self.totals[name] = self.totals.get(name, 0.0) + sum(b.elapsed_time(e) for b, e in pairs) / 1e3
        self.active = False
        return dict(self.totals)

