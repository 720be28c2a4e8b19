"""Runs of trained models on held-out data: `mkd eval` (validation losses, lm-eval tasks) and
`mkd analyze` (the teacher/student logit analysis). The study package reads their results; it
runs no model itself."""
