"""Autoplastic (seed 004): residual blocks mixing convolution and a light attention, whose
depth gate P, channel gates C and mix α are learned by gradient, a stability gate on a
width-independent scale with two learning timescales, and an exact static export.

- `AutoplasticNet` (`ANNBlock`, `SpatialSelfAttentionLite`): the network, 2-D or 1-D;
- `gates`: hard-concrete L0 gates (default), sigmoid straight-through gates, the seed's rule
  gates, the stretched-sigmoid α;
- `stability`: S = exp(−‖W − W_EMA‖ / ‖W_EMA‖);
- `TrainConfig` (the seed's fields), `NetConfig`; `AutoplasticTrainer` and its hooks on the one
  training loop;
- `export_static`: the exact static network; `measure_latency`;
- ``morpho autoplastic`` (`experiment`, `cli`).
"""

from .config import NetConfig, TrainConfig
from .export import StaticAutoplasticNet, export_static, measure_latency, reinitialise
from .gates import HardConcreteGate, MixGate, RuleGate, SigmoidSTGate
from .hooks import (
    AutoplasticLoss,
    CosineWarmup,
    GateLog,
    GatePenalty,
    MixUp,
    RuleGates,
    SelectFrom,
    StabilityGate,
)
from .models import ANNBlock, AutoplasticNet, Backbone, SpatialSelfAttentionLite
from .stability import seed_stability, stability
from .trainer import AutoplasticTrainer

__all__ = ["ANNBlock", "AutoplasticLoss", "AutoplasticNet", "AutoplasticTrainer", "Backbone",
           "CosineWarmup", "GateLog", "GatePenalty", "HardConcreteGate", "MixGate", "MixUp",
           "NetConfig", "RuleGate", "RuleGates", "SelectFrom", "SigmoidSTGate",
           "SpatialSelfAttentionLite", "StabilityGate", "StaticAutoplasticNet", "TrainConfig",
           "export_static", "measure_latency", "reinitialise", "seed_stability", "stability"]
