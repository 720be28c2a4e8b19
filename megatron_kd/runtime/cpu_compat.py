"""Run megatron-core 0.19.2 on CPU with the gloo backend.

This is the only module in megatron_kd that patches third-party code. megatron-core is written
for CUDA devices and assumes them in a handful of places; each patch below names the
megatron-core behaviour it adapts. Nothing here is active when CUDA is available: on a GPU
cluster megatron-core runs untouched.

Call :func:`activate` once per process, before building any megatron-core object. It is
idempotent, refuses an untested megatron-core version with a clear message, and is a no-op
(returning False) when CUDA is available, except for one thing that holds on any device: the
upstream deprecation notices below are said once per process tree (:func:`quiet_upstream_notices`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import warnings
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from megatron_kd.console import NOTICES_SHOWN_ENV
from megatron_kd.errors import SetupError

log = logging.getLogger(__name__)

#: megatron-core versions whose CUDA assumptions were audited for this module.
SUPPORTED_MCORE_VERSIONS = ("0.19.2",)

_ACTIVE = False
_MODE: TorchFunctionMode | None = None


def is_active() -> bool:
    """True once :func:`activate` has patched this process for CPU."""
    return _ACTIVE


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device == "cuda" or device.startswith("cuda:")
    # A bare int is a CUDA ordinal in torch's device grammar; megatron-core passes
    # torch.cuda.current_device() (an int) as `device=` everywhere.
    return isinstance(device, int) and not isinstance(device, bool)


_TENSOR_TYPE_TO_CUDA = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


class _CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA placements to the CPU for every torch call made while active.

    Adapts: hard-coded `device="cuda"` / `"cuda:N"` / ordinals, `.cuda()` and `.to("cuda")`
    throughout megatron-core's forward and optimizer code (GlobalMemoryBuffer, tensor-parallel mappings,
    pipeline schedules' zero loss tensors, p2p buffers, grad clipping, optimizer flags, tied
    embeddings with PP>1). Also answers `Tensor.type()` with the CUDA type names that the
    optimizers and grad clipping assert on ('torch.cuda.FloatTensor', ...), since on CPU the
    same parameters are plain CPU tensors of the same dtype.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _TENSOR_TYPE_TO_CUDA.get(name, name)
        dev = kwargs.get("device")
        if dev is not None and _is_cuda_device(dev):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _NoopStream:
    """Stand-in for torch.cuda.Stream/Event on CPU, where work is synchronous.

    Adapts: DDP grad buffers and the distributed optimizer call
    `torch.cuda.current_stream()`, record events and wait on streams; pipeline p2p creates
    communication streams. On CPU every op has completed when it returns, so waiting is a no-op.
    """

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _NoopStream()

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _noop(*args, **kwargs):
    return None


@contextlib.contextmanager
def _null_stream_ctx(*args, **kwargs):
    yield


def _cpu_rng_state(*args, **kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, *args, **kwargs) -> None:
    torch.set_rng_state(new_state)


def _make_cpu_rng_tracker_class():
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """megatron-core's named RNG states (data-parallel, model-parallel, expert), held as
        CPU generator states.

        Adapts: `CudaRNGStatesTracker.add` seeds with `torch.cuda.manual_seed` and reads
        `torch.cuda.get_rng_state`; `fork` swaps CUDA generator states and warns when the CPU
        state changed inside it, which on CPU is exactly what is supposed to happen.
        """

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise RuntimeError(f"seed {seed} already exists")
            if name in self.states_:
                raise RuntimeError(f"rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise RuntimeError(f"rng state {name} is not added")
            outer = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(outer)

    return CpuRNGStatesTracker


def _cuda_to_cpu_in_recompute() -> None:
    """Adapts: activation recomputation. The autograd engine runs a Function's backward without
    the caller's torch function modes, so the forward that megatron-core's CheckpointFunction
    replays there (train.recompute) would meet its hard-coded `device="cuda"` (the default causal
    mask, ...) with the mode off; the replay runs under the mode again."""
    from megatron.core.tensor_parallel import random as mrandom

    for cls in (mrandom.CheckpointFunction, mrandom.CheckpointWithoutOutputFunction):
        original = cls.backward

        def backward(ctx, *args, _original=original):
            with _CudaToCpuMode():
                return _original(ctx, *args)

        cls.backward = staticmethod(backward)


def _patch_torch_norm_for_sequence_parallel() -> None:
    """Adapts: megatron-core's torch-norm wrapper (the local spec's RMSNorm) asserts
    "sequence parallel not supported by torch LayerNorm". The norm itself needs nothing special
    under sequence parallelism: each rank normalises its own sequence shard. What it needs is
    that its weight gradients (partial sums over the shard) are summed over TP ranks, which
    finalize_model_grads does for parameters tagged `sequence_parallel`, as TE's norms are."""
    import copy

    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    original_new = WrappedTorchNorm.__new__

    def new(cls, config, hidden_size, eps=1e-5, **kwargs):
        if not config.sequence_parallel:
            return original_new(cls, config, hidden_size, eps, **kwargs)
        plain = copy.copy(config)
        plain.sequence_parallel = False
        norm = original_new(cls, plain, hidden_size, eps, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm

    WrappedTorchNorm.__new__ = staticmethod(new)


def _distributed_optimizer_loads_without_apex() -> None:
    """Adapts: loading a distributed optimizer's checkpoint without Apex or Transformer Engine
    (megatron-core then uses torch's Adam, whose per-parameter state holds a `step` tensor).
    Describing what to load reads that step from the optimizer's state, which a freshly built
    optimizer does not have yet (AssertionError): it gets zero Adam state first (the load
    overwrites it). Loading then gives every state a `step` and copies each of the state's
    tensors from the checkpoint's shard, which keeps the step per group, not per parameter
    (KeyError 'step'): the step is set aside while the others are copied. And that step is one
    tensor shared by every parameter's state, which torch's Adam increments once per parameter
    each step (wrong bias correction from the first step after a resume): each gets its own."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    sharded_state_dict = DistributedOptimizer.sharded_state_dict
    set_states = DistributedOptimizer._set_main_param_and_optimizer_states

    def sharded_state_dict_(self, model_sharded_state_dict, is_loading=False, *args, **kwargs):
        if is_loading:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    state = self.optimizer.state[p]
                    if not state:
                        state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(p),
                                     exp_avg_sq=torch.zeros_like(p))
        return sharded_state_dict(self, model_sharded_state_dict, is_loading, *args, **kwargs)

    def set_states_(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None)
        try:
            return set_states(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    load_state_dict = DistributedOptimizer.load_state_dict

    def load_state_dict_(self, state_dict):
        load_state_dict(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()

    DistributedOptimizer.sharded_state_dict = sharded_state_dict_
    DistributedOptimizer.load_state_dict = load_state_dict_
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states_


def _eager(fn=None, **kwargs):
    """torch.compile's signature, returning what it is given (used as a decorator too)."""
    return fn if fn is not None else (lambda f: f)


@contextlib.contextmanager
def _eager_compile_while_importing_mcore():
    """Adapts: megatron-core applies `torch.compile` to its fusion kernels and MoE routing while
    it is being imported (megatron.core.jit.jit_fuser, @torch.compile), and the first such call
    imports TorchInductor: ~3 s in every process here, for kernels the CPU configuration never
    calls (bias fusions are off on CPU, models/gpt.py; no MoE). While megatron.core is first
    imported, torch.compile returns its function unchanged, so those kernels stay eager; it is
    restored right after. No effect once megatron.core is imported."""
    if "megatron.core" in sys.modules:
        yield
        return
    compile_ = torch.compile
    torch.compile = _eager
    try:
        yield
    finally:
        torch.compile = compile_


@contextlib.contextmanager
def _no_wandb_while_importing_mcore():
    """Adapts: megatron.core.timers imports wandb (when installed) at package import, ~0.7 s in
    every process here, for a timer writer megatron_kd never uses (its own metrics module imports
    wandb lazily, only when logging.wandb.project is set). While megatron.core is first imported,
    `import wandb` fails there, as if it were absent (timers keep wandb = None); the block is
    lifted right after, so a later import of wandb works. No effect if wandb is already loaded."""
    if "megatron.core" in sys.modules or "wandb" in sys.modules:
        yield
        return
    sys.modules["wandb"] = None  # type: ignore[assignment]  # the import system's "absent" marker
    try:
        yield
    finally:
        if sys.modules.get("wandb", 0) is None:
            del sys.modules["wandb"]


@contextlib.contextmanager
def _no_gpu_kernel_warnings_while_importing_mcore():
    """megatron-core's package import warns, once per module (optimizer, clip_grads, FSDP's mixed
    precision), that Transformer Engine and Apex are not installed and it falls back to torch's
    kernels. On CPU neither can be installed and the fallbacks are this layer's path, so those
    warnings say nothing in any CPU process (a `mkd` command, a test, the API): they are not shown
    while megatron.core is first imported here. Every other warning of the import still is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(Transformer Engine|TransformerEngine|Apex).* not installed",
                                category=UserWarning)
        yield


def _in_process_checkpoint_results() -> None:
    """Adapts: dist_checkpointing's file writer returns its results through a queue that
    megatron-core creates on the first save as a *spawned* multiprocessing Manager: a helper
    process started by re-importing the program (~4 s per process here, and an orphan left
    behind when a trainer is killed). megatron_kd saves synchronously, in the saving process,
    so a thread-safe in-process queue carries the same results."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def _alltoall_split_sizes_as_lists() -> None:
    """Adapts: the alltoall MoE token dispatcher hands its split sizes to all_to_all_single as
    tensors, which NCCL's binding takes and gloo's refuses (only Python lists). The same numbers
    as lists; the backward reads them back from ctx, lists too."""
    from megatron.core.tensor_parallel import mappings

    forward = mappings._AllToAll.forward

    def forward_with_lists(ctx, group, input, output_split_sizes, input_split_sizes, use_nccl_stream=False):
        def as_list(sizes):
            return sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes

        return forward(ctx, group, input, as_list(output_split_sizes), as_list(input_split_sizes), use_nccl_stream)

    mappings._AllToAll.forward = staticmethod(forward_with_lists)


def installed_mcore_version() -> str:
    """The installed distribution's version. (megatron.core.__version__ appends the git hash
    of whatever repository the process runs in, so it is not used.)"""
    from importlib import metadata

    try:
        return metadata.version("megatron-core")
    except metadata.PackageNotFoundError as exc:
        raise SetupError(
            "megatron-core is not installed; run `make install` (CPU) or "
            "`pip install -r requirements.txt` (GPU cluster: docs/slurm-and-gpus.md, \"Installing on a GPU cluster\")"
        ) from exc


def _check_version() -> None:
    version = installed_mcore_version()
    if version not in SUPPORTED_MCORE_VERSIONS:
        raise SetupError(
            f"megatron-core {version} is installed, but the CPU runtime layer was written for "
            f"{', '.join(SUPPORTED_MCORE_VERSIONS)}; install megatron-core=="
            f"{SUPPORTED_MCORE_VERSIONS[-1]} (see requirements.txt) or run on a CUDA machine"
        )


# megatron-core 0.19.2's notices about APIs this package uses on purpose, logged at WARNING each time
# the object is built (a run builds one GPTModel per virtual pipeline stage, its teacher more).
#
# GPTModel's is said once per process tree, in one line that says why (NOTICES_SHOWN_ENV, which
# the processes started after it inherit: torchrun's ranks, a sweep's jobs). Why this package
# stays on GPTModel: HybridModel, its successor, builds another module tree (layers from a
# layer-pattern string), so its state-dict keys differ from GPTModel's, and every checkpoint
# written here, the Hugging Face converters (convert/hf.py, tested against transformers' logits)
# and the TP/PP/VPP layouts tested within 1e-5 of TP=1 are GPTModel's; megatron-core 0.19.x still
# takes GPTModel's critical fixes. Moving is a change of the pinned version of its own, with the
# converters and the layout tests redone.
#
# The async-save notice is never said: checkpoint/ saves synchronously, and megatron-core 0.19.2's
# synchronous torch_dist save itself goes through the deprecated path (strategies/torch.py: save()
# calls async_save(async_strategy="mcore")), so no setting of ours would change it.
GPT_MODEL_NOTICE = ("megatron-core marks GPTModel deprecated (HybridModel replaces it); megatron_kd stays "
                    "on GPTModel, whose checkpoints, converters and parallel layouts it is tested with")
UPSTREAM_NOTICES = {  # logger -> (the message's start, its one line: None = never said)
    "megatron.core.models.gpt.gpt_model": ("GPTModel IS DEPRECATED", GPT_MODEL_NOTICE),
    "megatron.core.dist_checkpointing.strategies.torch": ("MCore's async save is deprecated", None),
}


class _OncePerProcessTree(logging.Filter):
    """A notice, in its one line, the first time in a process tree; then never in it or in the
    processes it starts (their environment says it was shown)."""

    def __init__(self, start: str, line: str | None):
        super().__init__()
        self.start, self.line = start, line

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.start):
            return True
        key = self.start.split()[0]
        shown = [k for k in os.environ.get(NOTICES_SHOWN_ENV, "").split(",") if k]
        if self.line is None or key in shown or "all" in shown:
            return False
        os.environ[NOTICES_SHOWN_ENV] = ",".join([*shown, key])
        record.msg, record.args = self.line, ()
        return True


def quiet_upstream_notices() -> None:
    """Install the once-per-process-tree filter on each notice's own logger (idempotent)."""
    for name, (start, line) in UPSTREAM_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerProcessTree) for f in logger.filters):
            logger.addFilter(_OncePerProcessTree(start, line))


def activate() -> bool:
    """Patch this process so megatron-core runs on CPU. Returns True when active.

    A no-op returning False when CUDA is available (set MKD_FORCE_CPU=1 to use the CPU path on a
    GPU machine, e.g. for debugging).
    """
    global _ACTIVE, _MODE
    quiet_upstream_notices()  # on any device: before the first model is built
    if _ACTIVE:
        return True
    if torch.cuda.is_available() and os.environ.get("MKD_FORCE_CPU") != "1":
        return False
    _check_version()

    cuda = torch.cuda
    # Adapts: torch.cuda.current_device() as the allocation device everywhere. It answers the
    # CPU device itself rather than an ordinal, because the function mode below is not on the
    # stack inside autograd's backward (it is popped while Tensor.backward is dispatched), and
    # megatron-core's custom backward functions allocate with device=current_device().
    cuda.current_device = lambda: torch.device("cpu")
    # Adapts: streams, events and synchronisation (DDP grad buffers, p2p, checkpoint save).
    cuda.Stream = _NoopStream
    cuda.Event = _NoopStream
    cuda.current_stream = lambda *a, **k: _NoopStream()
    cuda.default_stream = lambda *a, **k: _NoopStream()
    cuda.stream = _null_stream_ctx
    cuda.synchronize = _noop
    cuda.empty_cache = _noop
    cuda.is_current_stream_capturing = lambda: False
    cuda.memory_stats = lambda *a, **k: {}
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_allocated = lambda *a, **k: 0
    # Adapts: nvtx ranges around pipeline stages and layers, which raise without CUDA.
    cuda.nvtx.range_push = _noop
    cuda.nvtx.range_pop = _noop
    cuda.nvtx.range = _null_stream_ctx

    with _eager_compile_while_importing_mcore(), _no_wandb_while_importing_mcore(), \
            _no_gpu_kernel_warnings_while_importing_mcore():
        import megatron.core  # noqa: F401  (its package import loads most of megatron-core)
    # Adapts: the RNG tracker (model-parallel / data-parallel named states) and activation
    # recomputation's save/restore of the device RNG state: on CPU the device RNG is the CPU one.
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _cpu_rng_state
    mrandom._set_cuda_rng_state = _set_cpu_rng_state
    mrandom._CUDA_RNG_STATE_TRACKER = _make_cpu_rng_tracker_class()()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    _patch_torch_norm_for_sequence_parallel()
    _cuda_to_cpu_in_recompute()
    _in_process_checkpoint_results()
    _distributed_optimizer_loads_without_apex()
    _alltoall_split_sizes_as_lists()

    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _ACTIVE = True
    log.debug("megatron_kd CPU runtime layer active (megatron-core on gloo)")
    return True
