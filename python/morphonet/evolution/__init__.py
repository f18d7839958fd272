"""Structure Net, second generation: a composable evolution system (seed 002).

Pieces: `EvolvableNetwork` / `create_standard_network` (edge-list layers,
`StandardSparseLayer`, with exact structural edits), `NetworkContext` and the interfaces
`Analyzer`, `GrowthStrategy`, `NetworkTrainer`; analyzers (`StandardExtremaAnalyzer`,
`NetworkStatsAnalyzer`); strategies (`ExtremaGrowthStrategy`, `ResidualBlockGrowthStrategy`,
`PruningGrowthStrategy`, `HybridGrowthStrategy`); the trainer `StandardNetworkTrainer` on the
one training loop, with the optimizer kept true (`sync_optimizer`); the orchestrator
`ComposableEvolutionSystem` and `create_standard_evolution_system`. The seed's import names
(``structure_net.evolution.components``, ``structure_net.evolution.interfaces``) are kept.
"""

from .analyzers import (
    NetworkStatsAnalyzer,
    SimpleInformationFlowAnalyzer,
    StandardExtremaAnalyzer,
)
from .components import create_standard_evolution_system
from .interfaces import Analyzer, EvolutionComponent, GrowthStrategy, NetworkContext, NetworkTrainer
from .network import (
    EvolvableNetwork,
    NetworkSpec,
    ResidualBlock,
    Stage,
    StandardSparseLayer,
    create_standard_network,
)
from .optim import optimizer_report, replace_parameter, sync_optimizer
from .strategies import (
    ExtremaGrowthStrategy,
    HybridGrowthStrategy,
    InformationFlowGrowthStrategy,
    PruningGrowthStrategy,
    ResidualBlockGrowthStrategy,
)
from .system import ComposableEvolutionSystem, EvolutionConfig, FunctionChangedError
from .trainer import StandardNetworkTrainer, TrainerConfig

__all__ = ["Analyzer", "ComposableEvolutionSystem", "EvolutionComponent", "EvolutionConfig",
           "EvolvableNetwork", "ExtremaGrowthStrategy", "FunctionChangedError", "GrowthStrategy",
           "HybridGrowthStrategy", "InformationFlowGrowthStrategy", "NetworkContext", "NetworkSpec",
           "NetworkStatsAnalyzer", "NetworkTrainer", "PruningGrowthStrategy", "ResidualBlock",
           "ResidualBlockGrowthStrategy", "SimpleInformationFlowAnalyzer", "Stage",
           "StandardExtremaAnalyzer", "StandardNetworkTrainer", "StandardSparseLayer",
           "TrainerConfig", "create_standard_evolution_system", "create_standard_network",
           "optimizer_report", "replace_parameter", "sync_optimizer"]
