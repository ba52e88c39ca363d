"""What an Optuna study's trials were measured under, and how a new request differs from it.

A trial's value is a meta-validation result of one run configuration; trials run under another
configuration (more steps, another family parameter, another search range, another objective)
are not comparable with new ones, and a best trial chosen among them is not the best trial of
the setup now asked for. ``gabench tune`` therefore refuses to resume such a study (or, with
``--retune-changed``, tunes it again from scratch), and a study file's compared runs refuse to
take their learning rates from it. No Optuna import here: the study loader uses it too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Resolves a run configuration's plug-in parameters (defaults filled in, strings parsed) given
#: the names the sampler sets; see :func:`gabench.tuning.resolved_config`.
Resolver = Callable[[Mapping[str, Any], set[str]], Mapping[str, Any]]

#: Run settings that do not change what a trial measures: the sampler replaces alpha and beta;
#: the meta-test (test_tasks) is not run inside tuning; eval_batch only chunks evaluation; and
#: the device is where the numbers are computed, not which numbers.
IGNORED = ("alpha", "beta", "test_tasks", "eval_batch", "device")


def expected_setup(config: Mapping[str, Any], objective: str, select: str,
                   ranges: Mapping[str, tuple[float, float]],
                   resolve: Resolver | None = None) -> dict[str, Any]:
    """The setup a tuning request asks for, as plain JSON values.

    Args:
        config: The base run configuration (``RunConfig.to_dict()``).
        objective: ``loss`` or ``acc``.
        select: ``best_val`` or ``final``.
        ranges: Optuna parameter name -> (low, high): alpha and beta, and any tuned inner steps,
            meta-batch or aggregator parameter.
        resolve: Fills in the plug-ins' defaults, so that ``{}`` and the default values compare
            equal (None: compared as written).
    """
    if resolve is not None:
        config = resolve(config, set(ranges))
    return _plain({"config": _tunable_removed(config, ranges), "objective": objective,
                   "select": select, "ranges": {k: [lo, hi] for k, (lo, hi) in ranges.items()}})


def recorded_setup(user_attrs: Mapping[str, Any], distributions: Iterable[Mapping[str, Any]],
                   resolve: Resolver | None = None) -> dict[str, Any] | None:
    """The setup an Optuna study's trials ran under (None: no trial to compare with).

    Args:
        user_attrs: The study's user attributes (``base_config``, ``objective``, ``select``, as
            :func:`gabench.tuning.tune` records them when it creates the study).
        distributions: The ``distributions`` (name -> an Optuna distribution with ``low`` and
            ``high``) of each trial that counts: finished ones, and those running now (whose
            process recorded the setup when it created the study).
        resolve: As for :func:`expected_setup`.
    """
    seen: list[dict[str, list[float]]] = []
    for dists in distributions:
        ranges = {k: [float(d.low), float(d.high)] for k, d in sorted(dists.items())}
        if ranges not in seen:
            seen.append(ranges)
    if not seen:
        return None
    names = {k for r in seen for k in r}
    config = user_attrs.get("base_config") or {}
    if resolve is not None:
        config = resolve(config, names)
    return _plain({"config": _tunable_removed(config, dict.fromkeys(names)),
                   "objective": user_attrs.get("objective", "loss"),
                   "select": user_attrs.get("select", "best_val"),
                   "ranges": seen[0] if len(seen) == 1 else seen})


def setup_changes(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any],
                  defaults: Mapping[str, Any]) -> list[str]:
    """How ``expected`` differs from ``recorded``, one phrase per difference ([]: the same).

    Args:
        recorded: :func:`recorded_setup` (None: nothing to compare with).
        expected: :func:`expected_setup`.
        defaults: Run settings' defaults, for settings a study recorded before they existed.
    """
    if recorded is None:
        return []
    out = []
    old_cfg, new_cfg = recorded["config"], expected["config"]
    plain_defaults = _plain(dict(defaults))
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if key in IGNORED:
            continue
        old = old_cfg.get(key, plain_defaults.get(key))
        new = new_cfg.get(key, plain_defaults.get(key))
        if not _same(old, new):
            out.append(f"{key} {_show(old)} -> {_show(new)}")
    for key in ("objective", "select"):
        if recorded[key] != expected[key]:
            out.append(f"{key} {recorded[key]} -> {expected[key]}")
    old_ranges, new_ranges = recorded["ranges"], expected["ranges"]
    if isinstance(old_ranges, list):
        out.append("the trials already mix several search ranges ("
                   + "; ".join(_show_ranges(r) for r in old_ranges) + ")")
    else:
        for name in sorted(set(old_ranges) | set(new_ranges)):
            old, new = old_ranges.get(name), new_ranges.get(name)
            if old is None:
                out.append(f"{name} tuned too (range {_show(new)})")
            elif new is None:
                out.append(f"{name} no longer tuned (was {_show(old)})")
            elif not _same(old, new):
                out.append(f"{name} range {_show(old)} -> {_show(new)}")
    return out


def _tunable_removed(config: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``config`` without what the sampler sets: alpha, beta and the other tuned names (tuned
    aggregator parameters are removed from ``aggregator_params``)."""
    names = set(names)
    out = {k: v for k, v in config.items() if k not in names and k not in IGNORED}
    if isinstance(out.get("aggregator_params"), Mapping):
        out["aggregator_params"] = {k: v for k, v in out["aggregator_params"].items() if k not in names}
    return out


def _plain(value: Any) -> Any:
    """JSON values only (tuples become lists), so recorded and expected setups compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _show_ranges(ranges: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_show(v)}" for k, v in ranges.items())
