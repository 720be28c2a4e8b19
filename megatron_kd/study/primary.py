"""Registered primary contrasts: a sweep's `primary:` block names, before anything runs, the one
test each claim's verdict reads, in place of the largest of many comparisons:

    primary:
      claim 1: {teachers: weak, alpha: [0.2, 0.5], set: indomain}  # the mean paired gain over those points > 0
      claim 2: {axis: [tiny@1ep, tiny@4ep]}   # the last step of this one axis (weakest teacher first)
      claim 3: {set: ood_test}                # the mean (OOD − in-domain) gain on this OOD test set > 0
      auto: {set: indomain, margin: 0.01}     # kd.auto against each teacher's best grid point (auto_test.py)

claim 1's `teachers` is `weak` (the teachers whose in-domain loss is above the student's
baseline, decided when the report reads the runs) or a list of teacher names; its contrast is the
baseline's loss minus the mean loss over those teachers × α on `set`. A registered claim is one
test: no Bonferroni within the claim; Holm over the claims as before (claims.read_claims).
Claims without an entry keep their multi-comparison test; claim 4 has one test already. `auto`
registers the test of a sweep's `auto` points (study/auto_test.py), outside the claims' Holm family:
the set it reads and the floor of its non-inferiority margin (parse_auto).

`mkd report --primary SWEEP.yaml` reads the block for one report (`registered`: the report's
pipeline between the command and claims.read_claims carries no claim options, so a context
variable holds it for that call); `mkd power` prices the registered tests (power.py)."""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar

from megatron_kd.errors import ConfigError

ENTRY_KEYS = {1: ("teachers", "alpha", "set"), 2: ("axis",), 3: ("set",)}
CLAIM_KEYS = {f"claim {k}": k for k in ENTRY_KEYS}
EXAMPLE = "{'claim 1': {teachers: weak, alpha: [0.2, 0.5], set: indomain}, 'claim 2': {axis: [T1, T2]}, " \
          "'claim 3': {set: ood_test}}"

AUTO_KEY = "auto"  # the kd.auto test's entry: not a claim
AUTO_ENTRY_KEYS = ("set", "margin")
MAX_AUTO_MARGIN = 1.0  # nats: a margin past any loss gap would call every kd.auto run "not worse"

_REGISTERED: ContextVar = ContextVar("registered primary contrasts", default=None)


def _names(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x for x in v)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_primary(primary, where: str) -> dict[int, dict]:
    """{claim: its entry} of a `primary:` block, its shape checked: claim 1's teachers "weak" or
    a tuple of names, alpha a tuple of floats; one line naming the key on a wrong one."""
    if not isinstance(primary, dict) or not primary:
        raise ConfigError(f"{where}: `primary` must be a mapping of claims to their registered contrasts, "
                          f"e.g. {EXAMPLE}")
    out = {}
    parse_auto(primary, where)  # its shape; the claims' entries follow
    for key, entry in primary.items():
        if key == AUTO_KEY:
            continue
        if key not in CLAIM_KEYS:
            extra = " (claim 4 is one test already: Spearman's ρ)" if key == "claim 4" else ""
            raise ConfigError(f"{where}: unknown key {key!r} in `primary`{extra}; valid: {', '.join(CLAIM_KEYS)}, "
                              f"{AUTO_KEY}")
        claim = CLAIM_KEYS[key]
        keys = ENTRY_KEYS[claim]
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: `primary.{key}` must be a mapping of {', '.join(keys)}, e.g. {EXAMPLE}")
        unknown = sorted(set(entry) - set(keys), key=str)
        missing = [k for k in keys if k not in entry]
        if unknown or missing:
            said = f"unknown key(s) {unknown}" if unknown else f"no {', '.join(missing)}"
            raise ConfigError(f"{where}: `primary.{key}` has {said}; it takes {', '.join(keys)}")
        out[claim] = _entry(claim, key, entry, where)
    return out


def _entry(claim: int, key: str, entry: dict, where: str) -> dict:
    def need(ok: bool, field: str, shape: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: `primary.{key}.{field}` must be {shape}")

    if "set" in entry:
        need(isinstance(entry["set"], str) and bool(entry["set"]), "set", "the name of a validation set")
    if claim == 1:
        t = entry["teachers"]
        need(t == "weak" or _names(t), "teachers", "`weak` or a list of teacher names")
        need(isinstance(entry["alpha"], list) and len(entry["alpha"]) > 0 and all(map(_number, entry["alpha"])),
             "alpha", "a list of the grid's fixed α values")
        for field, values in (("teachers", t if t != "weak" else []), ("alpha", entry["alpha"])):
            dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
            need(dup is None, field, f"a list naming each value once ({dup!r} is twice)")
        return {"teachers": "weak" if t == "weak" else tuple(t),
                "alpha": tuple(float(a) for a in entry["alpha"]), "set": entry["set"]}
    if claim == 2:
        axis = entry["axis"]
        need(_names(axis) and len(axis) >= 2 and len(set(axis)) == len(axis), "axis",
             "a list of two or more distinct teacher names, weakest first")
        return {"axis": tuple(axis)}
    return {"set": entry["set"]}


def parse_auto(primary, where: str) -> dict | None:
    """The `auto: {set: SET, margin: NATS}` entry of a `primary:` block (None without one): the set
    the kd.auto test reads and its margin's floor, in (0, MAX_AUTO_MARGIN] nats."""
    if not isinstance(primary, dict) or AUTO_KEY not in primary:
        return None
    entry = primary[AUTO_KEY]
    shape = (f"a mapping {{set: SET, margin: NATS}} (the set the kd.auto test reads, the floor of its margin in "
             f"(0, {MAX_AUTO_MARGIN:g}] nats), e.g. {{set: indomain, margin: 0.01}}")
    ok = isinstance(entry, dict) and set(entry) == set(AUTO_ENTRY_KEYS) and isinstance(entry.get("set"), str) \
        and bool(entry["set"]) and _number(entry.get("margin")) and 0 < entry["margin"] <= MAX_AUTO_MARGIN
    if not ok:
        raise ConfigError(f"{where}: `primary.{AUTO_KEY}` must be {shape}")
    return {"set": entry["set"], "margin": float(entry["margin"])}


def check_names(reg: dict[int, dict], where: str, teachers, controls=(), alphas=None, verdict_sets=None,
                ood_sets=None, dev_sets=()) -> None:
    """The names a registered contrast uses exist in the design: its teachers (real ones, not
    controls), its α (fixed values of the grid), its sets (claim 1: a set verdicts read; claim 3:
    an OOD test set). A collection given as None is not checked (not known yet)."""
    teachers, controls = set(teachers), set(controls)

    def known(kind: str, value, valid, extra: str = "") -> None:
        if valid is not None and value not in valid:
            shown = ", ".join(sorted(map(str, valid))[:20]) or "none"
            raise ConfigError(f"{where}: {kind} {value!r} is not one of this design's{extra} ({shown})")

    real = teachers - controls
    for claim, e in sorted(reg.items()):
        for t in (e.get("teachers") if e.get("teachers") != "weak" else None) or e.get("axis") or ():
            if t in controls:
                raise ConfigError(f"{where}: claim {claim}'s teacher {t!r} is a control (no parameters); the "
                                  "registered contrast reads real teachers")
            known(f"claim {claim}'s teacher", t, real, " real teachers")
        for a in e.get("alpha") or ():
            known("claim 1's α", a, None if alphas is None else {float(x) for x in alphas}, " fixed α values")
        s = e.get("set")
        if s is None:
            continue
        if s in set(dev_sets):
            raise ConfigError(f"{where}: claim {claim}'s set {s!r} is a dev set (it chooses, it reads no verdict); "
                              f"name its test twin")
        known(f"claim {claim}'s set", s, verdict_sets if claim == 1 else ood_sets,
              " verdict sets" if claim == 1 else " out-of-distribution test sets")


@contextlib.contextmanager
def registered(primary: dict | None, source: str = "primary"):
    """Within it, claims.read_claims reads `primary` (a sweep's `primary:` block; `source` names
    it in errors) unless given one of its own."""
    token = _REGISTERED.set((primary, source) if primary else None)
    try:
        yield
    finally:
        _REGISTERED.reset(token)


def current() -> tuple[dict, str] | None:
    """(the registered `primary:` block, where it comes from), or None."""
    return _REGISTERED.get()


def describe_alphas(alphas) -> str:
    return "{" + ", ".join(f"{a:g}" for a in sorted(alphas)) + "}"
