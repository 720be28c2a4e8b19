"""lm-eval harness adapter: a megatron_kd checkpoint as an `lm_eval.api.model.LM`.

loglikelihood and loglikelihood_rolling are batched forward passes of the megatron-core model
(any TP; PP=1), using the same model call and logits as `mkd eval`; generate_until is greedy
decoding. `run_tasks` drives lm_eval.simple_evaluate offline (local task YAMLs).
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from megatron_kd.errors import ConfigError, SetupError

try:  # lm-eval is an optional dependency of the evaluation path
    from lm_eval.api.model import LM
except ImportError:  # pragma: no cover - exercised only without lm-eval
    LM = object


class MegatronKDLM(LM):
    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 8, tp_group=None):
        super().__init__()
        self.model, self.tok = model, tokenizer
        self.max_length, self.batch_size, self.tp_group = max_length, batch_size, tp_group
        self.vocab = tokenizer.vocab_size

    # -- model access --------------------------------------------------------------------
    @torch.no_grad()
    def _log_probs(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence: log-probabilities [len, V] of each next token, full vocabulary."""
        n = max(len(x) for x in batch)
        tokens = torch.zeros(len(batch), n, dtype=torch.long)
        for i, x in enumerate(batch):
            tokens[i, : len(x)] = torch.tensor(x)
        if torch.cuda.is_available():
            tokens = tokens.cuda()
        pos = torch.arange(n, device=tokens.device).expand(len(batch), -1)
        logits = self.model(tokens, pos, None)
        if self.tp_group is not None and torch.distributed.get_world_size(self.tp_group) > 1:
            from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

            logits = gather_from_tensor_model_parallel_region(logits, group=self.tp_group)
        logp = F.log_softmax(logits[..., : self.vocab].float(), dim=-1)
        return [logp[i, : len(x)] for i, x in enumerate(batch)]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        out = []
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            seqs = []
            for ctx, cont in chunk:
                full = (ctx + cont)[-(self.max_length + 1):]
                seqs.append(full[:-1])
            for (ctx, cont), seq, lp in zip(chunk, seqs, self._log_probs(seqs)):
                k = len(cont)
                targets = torch.tensor(cont, device=lp.device)
                rows = lp[len(seq) - k:]
                ll = rows.gather(-1, targets[:, None]).sum().item()
                greedy = bool((rows.argmax(-1) == targets).all())
                out.append((ll, greedy))
        return out

    # -- the LM interface ------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            context, continuation = req.args
            ctx = [self.tok.eod] + self.tok.encode(context) if context else [self.tok.eod]
            pairs.append((ctx, self.tok.encode(continuation)))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        results = []
        for req in requests:
            (text,) = req.args[:1]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok.encode(text), prefix_token=self.tok.eod,
                max_seq_len=self.max_length, context_len=1)]
            results.append(sum(ll for ll, _ in self._score(windows)))
        return results

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            max_new = int(kwargs.get("max_gen_toks", 64))
            ids = [self.tok.eod] + self.tok.encode(context)
            new: list[int] = []
            for _ in range(max_new):
                window = (ids + new)[-self.max_length:]
                nxt = int(self._log_probs([window])[0][-1].argmax())
                if nxt == self.tok.eod:
                    break
                new.append(nxt)
                text = self.tok.decode(new)
                if any(u in text for u in until):
                    break
            text = self.tok.decode(new)
            for u in until:
                text = text.split(u)[0]
            outputs.append(text)
        return outputs


OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # tasks run on local data: no downloads


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None):
    """lm-eval's TaskManager over its own tasks and `include_path` (a folder of task YAMLs); built
    once per process (indexing lm-eval's tasks takes seconds, and `mkd eval` checks the names
    before the model loads, then runs them)."""
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path} is not a directory; give the folder of your "
                          "lm-eval task YAMLs")
    for name in OFFLINE_ENV:  # read when `datasets` is imported: before lm-eval imports it
        os.environ.setdefault(name, "1")
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise SetupError("--tasks needs lm-eval: pip install lm-eval (or drop --tasks)") from exc
    return TaskManager(include_path=include_path) if include_path else TaskManager()


def check_tasks(tasks: list[str], manager) -> None:
    """Every name in `tasks` is a task, group or tag lm-eval knows (or a glob matching some, or a
    task YAML file): an unknown one is one line with the close names, before anything loads
    (lm-eval itself raises a KeyError once the model is up)."""
    known = manager.all_tasks
    unknown = [t for t in tasks if t not in known and not manager.match_tasks([t])
               and not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]
    if unknown:
        hints = []
        for t in unknown:
            close = difflib.get_close_matches(t, known, n=3, cutoff=0.6)
            hints.append(f"{t!r}" + (f" (close: {', '.join(close)})" if close else ""))
        where = f" or under --include-path {manager.include_path}" if manager.include_path else ""
        raise ConfigError(f"unknown lm-eval task(s) {'; '.join(hints)[:600]}: not among lm-eval's "
                          f"{len(known):,} tasks{where}; check the name (`lm-eval ls tasks`) or add its "
                          "YAML with --include-path")
    check_task_data(tasks, manager)


def check_task_data(tasks: list[str], manager) -> None:
    """Each task's data loads here, offline (local files or the Hugging Face cache): a task whose
    data is not on the machine is one line saying how to provide it, before the model loads
    (lm-eval itself fails inside the ranks with a page of traceback)."""
    for task in tasks:
        try:
            manager.load_task_or_group([task])
        except Exception as exc:  # noqa: BLE001  (datasets raises ConnectionError, FileNotFoundError, ...)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"lm-eval task {task!r}: its data is not available offline ({reason}); put the "
                              "data on this machine and give a local task YAML that reads it (dataset_path: json "
                              "with dataset_kwargs.data_files, as tests/evals/tasks/mkd_tiny_mc.yaml) with "
                              "--include-path DIR") from exc


def run_tasks(model, tokenizer, cfg, tasks: list[str], include_path: str | None,
              limit: int | None = None, batch_size: int = 8) -> dict:
    """lm_eval.simple_evaluate on `tasks` (offline: local task YAMLs and data files)."""
    manager = task_manager(include_path)  # offline (OFFLINE_ENV)
    check_tasks(tasks, manager)
    from lm_eval import simple_evaluate
    from megatron.core import parallel_state

    lm = MegatronKDLM(model, tokenizer, cfg.train.seq_length, batch_size,
                      parallel_state.get_tensor_model_parallel_group())
    res = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                          log_samples=False, bootstrap_iters=0)
    return {"results": res.get("results", {}), "versions": res.get("versions", {}),
            "n-samples": res.get("n-samples", {})}
