"""`mkd report --primary SWEEP.yaml`: the report's claims read through the registered primary
contrasts of a sweep's `primary:` block (study/primary.py) — for a sweep directory, or for a
results table, which carries no sweep file of its own."""

from __future__ import annotations


def with_registered_primary(cmd_report):
    """`cmd_report`, run with the `primary:` block of `args.primary` (a sweep YAML) registered."""

    def run(args) -> int:
        path = getattr(args, "primary", None)
        if not path:
            return cmd_report(args)
        from megatron_kd.errors import ConfigError
        from megatron_kd.study.primary import registered
        from megatron_kd.study.sweep import load_sweep

        spec = load_sweep(path)  # the block's shape, teachers and α checked against its grid
        if not spec.get("primary"):
            raise ConfigError(f"--primary {path}: the sweep has no `primary:` block naming each claim's registered "
                              "contrast, e.g. primary: {'claim 1': {teachers: weak, alpha: [0.2], set: indomain}}")
        with registered(spec["primary"], f"--primary {path}"):
            return cmd_report(args)

    return run
