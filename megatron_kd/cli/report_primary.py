"""`mkd report --primary SWEEP.yaml`: the report's claims read through the registered primary
contrasts of a sweep's `primary:` block (study/primary.py) — for a sweep directory, or for a
results table, which carries no sweep file of its own. Without --primary, a sweep directory's
own block (primary.json, written with its recipes) is read."""

from __future__ import annotations

from pathlib import Path


def with_registered_primary(cmd_report):
    """`cmd_report`, run with the `primary:` block of `args.primary` (a sweep YAML) registered, or
    else with the sweep directory's own (its primary.json), if it has one."""

    def run(args) -> int:
        from megatron_kd.study.primary import registered

        path = getattr(args, "primary", None)
        if not path:
            block, source = sweep_dir_primary(getattr(args, "sweep_dir", None))
            with registered(block, source):
                return cmd_report(args)
        from megatron_kd.errors import ConfigError
        from megatron_kd.study.sweep import load_sweep

        spec = load_sweep(path)  # the block's shape, teachers and α checked against its grid
        if not spec.get("primary"):
            raise ConfigError(f"--primary {path}: the sweep has no `primary:` block naming each claim's registered "
                              "contrast, e.g. primary: {'claim 1': {teachers: weak, alpha: [0.2], set: indomain}}")
        with registered(spec["primary"], f"--primary {path}"):
            return cmd_report(args)

    return run


def sweep_dir_primary(sweep_dir) -> tuple[dict | None, str]:
    """(the `primary:` block a sweep directory's primary.json holds, where it comes from); None
    where the directory has none (a sweep without the block writes null; an older one no file)."""
    from megatron_kd.jsonio import read_json
    from megatron_kd.study.sweep import PRIMARY_FILE

    path = Path(sweep_dir) / PRIMARY_FILE if sweep_dir else None
    if path is None or not path.is_file():
        return None, ""
    block = read_json(path, (dict, type(None)), "the sweep's registered primary contrasts")
    return block, f"{path} (the sweep's `primary:` block)"
