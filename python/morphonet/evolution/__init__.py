"""Structure Net, second generation: a composable evolution system (seed 002).

Pieces: `EvolvableNetwork` / `create_standard_network` (edge-list layers,
`StandardSparseLayer`, with exact structural edits), `NetworkContext` and the interfaces
`Analyzer`, `GrowthStrategy`, `NetworkTrainer`; analyzers (`StandardExtremaAnalyzer`,
`NetworkStatsAnalyzer`, `SimpleInformationFlowAnalyzer`); strategies
(`ExtremaGrowthStrategy`, `ResidualBlockGrowthStrategy`, `PruningGrowthStrategy`,
`HybridGrowthStrategy`, `InformationFlowGrowthStrategy`); the trainer `StandardNetworkTrainer`
on the one training loop, with the optimizer kept true (`sync_optimizer`); the adaptive
learning-rate rules (`adaptive_lr`: hooks over parameter groups, e.g.
`UnifiedAdaptiveLearning`); the orchestrator `ComposableEvolutionSystem` and
`create_standard_evolution_system`. The seed's import names
(``structure_net.evolution.components``, ``structure_net.evolution.interfaces``) are kept.
"""

from .adaptive_lr import (
    AdaptiveScheduler,
    ExponentialBackoffScheduler,
    ExtremaPhaseScheduler,
    GrowthPhaseScheduler,
    LayerAgeAwareScheduler,
    LayerwiseAdaptiveRates,
    ScaleDependentScheduler,
    SoftClampingScheduler,
    UnifiedAdaptiveLearning,
)
from .analyzers import (
    GraphAnalyzer,
    NetworkStatsAnalyzer,
    SimpleInformationFlowAnalyzer,
    StandardExtremaAnalyzer,
)
from .components import create_standard_evolution_system
from .interfaces import Analyzer, EvolutionComponent, GrowthStrategy, NetworkContext, NetworkTrainer
from .layers import (
    ExtremaAwareSparseLayer,
    ResidualBlock,
    StandardSparseLayer,
    TemporaryPatchLayer,
)
from .network import EvolvableNetwork, NetworkSpec, Stage, create_standard_network
from .optim import optimizer_report, replace_parameter, sync_optimizer
from .rewiring import RigLRewiring
from .strategies import (
    ExtremaGrowthStrategy,
    HybridGrowthStrategy,
    InformationFlowGrowthStrategy,
    PruningGrowthStrategy,
    ResidualBlockGrowthStrategy,
)
from .system import ComposableEvolutionSystem, EvolutionConfig, FunctionChangedError
from .topology import HomologicalAnalyzer, TopologicalAnalyzer
from .trainer import StandardNetworkTrainer, TrainerConfig

__all__ = ["AdaptiveScheduler", "Analyzer", "ComposableEvolutionSystem", "EvolutionComponent",
           "EvolutionConfig", "EvolvableNetwork", "ExponentialBackoffScheduler",
           "ExtremaAwareSparseLayer", "ExtremaGrowthStrategy", "ExtremaPhaseScheduler",
           "FunctionChangedError", "GraphAnalyzer", "GrowthPhaseScheduler", "GrowthStrategy",
           "HomologicalAnalyzer", "HybridGrowthStrategy", "InformationFlowGrowthStrategy",
           "LayerAgeAwareScheduler", "LayerwiseAdaptiveRates", "NetworkContext", "NetworkSpec",
           "NetworkStatsAnalyzer", "NetworkTrainer", "PruningGrowthStrategy", "ResidualBlock",
           "ResidualBlockGrowthStrategy", "RigLRewiring", "ScaleDependentScheduler",
           "SimpleInformationFlowAnalyzer", "SoftClampingScheduler", "Stage",
           "StandardExtremaAnalyzer", "StandardNetworkTrainer", "StandardSparseLayer",
           "TemporaryPatchLayer", "TopologicalAnalyzer", "TrainerConfig", "UnifiedAdaptiveLearning",
           "create_standard_evolution_system", "create_standard_network", "optimizer_report",
           "replace_parameter", "sync_optimizer"]
