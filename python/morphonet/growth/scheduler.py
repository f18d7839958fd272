"""GrowthScheduler: when to grow, and how much, from gradient-variance spikes and a credit economy.

Units, stated once and used everywhere:

* ``window_steps`` — optimizer **steps** (batches). The scheduler is fed one gradient norm per
  step; every ``window_steps`` steps it closes a window and compares its variance with the
  previous window's: a **spike** is ``|var_now − var_prev| / var_prev ≥ spike_threshold``
  (0.5 = a 50% change). Windows do not overlap, so one change is not counted ten times.
* credits: ``credits_per_spike`` (10) per spike; growth needs ``growth_threshold`` (100) and
  spends that many.
* ``cooldown_epochs`` — **epochs** of stabilisation after a growth event during which no growth
  happens (seed: 10; spikes still earn credits); ``cooldown_steps``, when set, counts the
  stabilisation in optimizer **steps** instead.
* termination: growth stops for good when an event finds nothing to grow (no high extremum
  in any layer, or no target with room: "extrema absence"), or when the caller's epochs end.
* ``phase_epochs`` — **epochs**: coarse while epoch < phase_epochs[0], medium while
  < phase_epochs[1], fine after (seed: 50 / 100).
* ``phase_limits`` — **structures** per phase (10 / 50 / 200). A structure is one routed bundle
  (up to `RouterConfig.bundle` source neurons of the phase, 64 / 16 / 1, each with its 3–4 new
  connections, plus any reciprocal or onward ones) or one cloned neuron; never a single edge.
* ``structures_per_event`` — **structures** at most per growth event, per phase (2 / 10 / 25:
  the coarse phase's 10 structures spread over five events).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..checks import check_instance, check_int
from ..config import Config, int_list, ints, reals, setting

PHASES = ("coarse", "medium", "fine")


@dataclass
class SchedulerConfig(Config):
    """Settings of GrowthScheduler (units in the module docstring)."""

    window_steps: int = setting(10, ints(1))
    spike_threshold: float = setting(0.5, reals(0, lo_open=True))
    credits_per_spike: int = setting(10, ints(1))
    growth_threshold: int = setting(100, ints(1))
    cooldown_epochs: int = setting(10, ints(0))
    cooldown_steps: Optional[int] = setting(None, ints(0, optional=True))
    phase_epochs: tuple[int, int] = setting((50, 100), int_list(0, length=2, as_tuple=True))
    phase_limits: tuple[int, int, int] = setting((10, 50, 200),
                                                 int_list(0, length=3, as_tuple=True))
    structures_per_event: tuple[int, int, int] = setting((2, 10, 25),
                                                         int_list(0, length=3, as_tuple=True))

    def check(self) -> None:
        if self.phase_epochs[0] > self.phase_epochs[1]:
            raise ValueError(f"phase_epochs must be (coarse_end, medium_end) with "
                             f"coarse_end <= medium_end, got {self.phase_epochs!r}")


@dataclass
class GrowthScheduler:
    """Credit economy over gradient-norm windows (see the module docstring for units).

    Call ``observe(grad_norm)`` after every optimizer step, ``should_grow(epoch)`` to ask, and
    ``record_growth(epoch, structures)`` after growing.
    """

    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    credits: int = 0
    step: int = 0
    spikes: int = 0
    last_growth_step: int = -(10**9)
    last_growth_epoch: int = -(10**9)
    terminated: bool = False
    used: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    events: list = field(default_factory=list)

    def __post_init__(self):
        check_instance("config", self.config, SchedulerConfig)
        self._window: list[float] = []
        self._prev_var: float | None = None

    def observe(self, grad_norm: float) -> bool:
        """Feed one step's gradient norm; returns True when this step closed a spiking window."""
        g = float(grad_norm)
        if math.isnan(g) or math.isinf(g):
            raise ValueError(f"grad_norm must be finite, got {grad_norm!r}")
        self.step += 1
        self._window.append(g)
        if len(self._window) < self.config.window_steps:
            return False
        var = _variance(self._window)
        self._window = []
        prev, self._prev_var = self._prev_var, var
        if prev is None or prev <= 0.0:
            return False  # relative change undefined
        if abs(var - prev) / prev >= self.config.spike_threshold:
            self.spikes += 1
            self.credits += self.config.credits_per_spike
            return True
        return False

    def state_dict(self) -> dict:
        """The scheduler's progress (credits, counters, the open gradient-norm window, the
        phase budgets used, the events) for a checkpoint; `load_state_dict` restores it."""
        return {"credits": self.credits, "step": self.step, "spikes": self.spikes,
                "last_growth_step": self.last_growth_step,
                "last_growth_epoch": self.last_growth_epoch, "terminated": self.terminated,
                "used": dict(self.used), "events": [dict(e) for e in self.events],
                "window": list(self._window), "prev_var": self._prev_var}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (the config stays this scheduler's)."""
        for k in ("credits", "step", "spikes", "last_growth_step", "last_growth_epoch",
                  "terminated"):
            setattr(self, k, state[k])
        self.used = dict(state["used"])
        self.events = [dict(e) for e in state["events"]]
        self._window, self._prev_var = list(state["window"]), state["prev_var"]

    def phase(self, epoch: int) -> str:
        """coarse / medium / fine for this epoch."""
        a, b = self.config.phase_epochs
        return PHASES[0] if epoch < a else PHASES[1] if epoch < b else PHASES[2]

    def in_cooldown(self, epoch: int) -> bool:
        """True during the stabilisation after the last growth: fewer than cooldown_epochs
        epochs (or cooldown_steps steps, when set) since it."""
        c = self.config
        if c.cooldown_steps is not None:
            return self.step - self.last_growth_step < c.cooldown_steps
        return epoch - self.last_growth_epoch < c.cooldown_epochs

    def budget(self, epoch: int) -> int:
        """Structures the next growth event may add: min(per-event cap, phase remainder)."""
        i = PHASES.index(self.phase(epoch))
        left = self.config.phase_limits[i] - self.used[PHASES[i]]
        return max(0, min(self.config.structures_per_event[i], left))

    def should_grow(self, epoch: int) -> bool:
        """Not terminated, enough credits, out of the stabilisation period and structures
        left in this phase."""
        return (not self.terminated and self.credits >= self.config.growth_threshold
                and not self.in_cooldown(epoch) and self.budget(epoch) > 0)

    def record_growth(self, epoch: int, structures: int, exhausted: bool = False) -> None:
        """Spend the credits, start the stabilisation and count ``structures`` against the
        phase limit (an attempt that added nothing still spends credits and stabilises);
        ``exhausted``: the event found nothing to grow (no extrema), which ends growth."""
        structures = check_int("structures", structures, 0)
        ph = self.phase(epoch)
        self.credits -= self.config.growth_threshold
        self.last_growth_step, self.last_growth_epoch = self.step, epoch
        self.terminated = self.terminated or bool(exhausted)
        self.used[ph] += structures
        self.events.append({"step": self.step, "epoch": epoch, "phase": ph,
                            "structures": structures, "exhausted": bool(exhausted)})


def _variance(v: list[float]) -> float:
    """Sample variance (n − 1)."""
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / max(1, len(v) - 1)
