"""``morpho speed``: learned structure → exported → measured speed at equal quality, and a
latency budget that chooses the structure.

- `run_speed` / `SpeedConfig` (experiment.py): MorphoNet models with learned structure and
  their dense twins trained the same way, exported (edge list, block-sparse, shrink) and timed
  interleaved against the twin; records, table and plot under ``results/speed``;
- `plan_for_budget` (budget.py): ``target_speedup=`` or ``latency_ms=`` → granularity, block
  size and per-layer density from the kernels' measured speed on this machine
  (`measure_costs`, costmodel.py); `PlannedTrainer` trains with the plan, `export_plan`
  exports it;
- text.py: the offline character corpus (Python standard-library sources); models.py: the
  models, dense twins and exports.
"""

from .budget import (
    GRANULARITY_COST,
    BudgetError,
    EnforceLayerDensities,
    LayerPlan,
    Plan,
    PlannedTrainer,
    export_plan,
    layer_shapes,
    plan_for_budget,
    solve_plan,
)
from .costmodel import CostModel, LayerShape, measure_costs
from .experiment import SpeedConfig, run_speed

__all__ = ["GRANULARITY_COST", "BudgetError", "CostModel", "EnforceLayerDensities", "LayerPlan",
           "LayerShape",
           "Plan", "PlannedTrainer", "SpeedConfig", "export_plan", "layer_shapes",
           "measure_costs", "plan_for_budget", "run_speed", "solve_plan"]
