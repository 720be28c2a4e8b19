"""Tests of megatron_kd/evals: lm-eval tasks on a checkpoint, offline."""
