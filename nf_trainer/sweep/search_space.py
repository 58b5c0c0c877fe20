"""The search space of an Optuna study, written in Hydra's sweep syntax and read with Hydra's own override parser:

    interval(1e-4, 1e-1)            a float (an int when both ends are ints), uniform
    tag(log, interval(1e-4, 1e-1))  the same on a log scale
    range(1, 8) / range(0, 1, 0.25) ints (or floats) on a step
    choice(adam, sgd) / adam,sgd    one of the values

Overrides that sweep nothing (`trainer.max_epochs=3`) are handed to every trial as they are.
Optuna is imported only by the functions that build distributions (this module loads with every sweep).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import OverrideParseException

from nf_trainer.core.errors import NfTrainerError

SYNTAX = ("interval(low, high), tag(log, interval(low, high)), range(start, stop[, step]) "
          "or choice(a, b, ...)")


@dataclass
class Space:
    distributions: dict = field(default_factory=dict)  # parameter -> optuna distribution
    fixed: dict[str, str] = field(default_factory=dict)  # key -> the override every trial gets, as written

    def grid(self) -> dict[str, list]:
        """The values of each parameter for Optuna's GridSampler: choices and ranges only."""
        from optuna.distributions import CategoricalDistribution  # lazy: optuna loads only for a study

        grid = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[name] = list(dist.choices)
            elif getattr(dist, "step", None) is not None and not dist.log:
                count = round((dist.high - dist.low) / dist.step)
                grid[name] = [dist.low + i * dist.step for i in range(count + 1)]
            else:
                raise NfTrainerError(f"hydra.sweeper.params.{name}: the grid sampler needs choice(...) or range(...), "
                                     "not an interval: change it or pick another sampler (hydra/sweeper/sampler=tpe)")
        return grid

    def overrides(self, params: dict) -> list[str]:
        """A trial's command line: its suggested values, then the fixed overrides."""
        return [f"{name}={value}" for name, value in params.items()] + list(self.fixed.values())


def parse_space(entries: list[str]) -> Space:
    """`entries`: `key=value` lines, the sweeper's `params` first, then the command line's (which win)."""
    try:
        parsed = OverridesParser.create().parse_overrides(entries)
    except OverrideParseException as exc:
        raise NfTrainerError(f"the search space does not parse: {' '.join(str(exc).split())[:300]}; "
                             f"write {SYNTAX}") from None
    space = Space()
    for override in parsed:
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
        else:
            space.fixed[key] = override.input_line
    return space


def distribution(override: Override):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # lazy: see above

    value, key = override.value(), override.get_key_element()
    try:
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        if isinstance(value, RangeSweep):
            if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
                # Hydra's range excludes its stop; Optuna's step distributions include their high end
                return FloatDistribution(value.start, value.stop - value.step, step=value.step)
            return IntDistribution(int(value.start), int(value.stop) - int(value.step), step=int(value.step))
        if isinstance(value, IntervalSweep):
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                return IntDistribution(value.start, value.end, log=log)
            return FloatDistribution(float(value.start), float(value.end), log=log)
    except ValueError as exc:  # Optuna's own check of the bounds
        raise NfTrainerError(f"the search space entry {override.input_line!r} is not a valid range: {exc}") from None
    raise NfTrainerError(f"the search space entry {override.input_line!r} ({key}) is not one Optuna can sample: "
                         f"write {SYNTAX}")
