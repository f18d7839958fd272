"""The seed's ``structure_net.evolution.components``: the composable system, the context,
and every built-in analyzer, strategy and trainer, with `create_standard_evolution_system`."""

from __future__ import annotations

from .analyzers import (
    GraphAnalyzer,
    NetworkStatsAnalyzer,
    SimpleInformationFlowAnalyzer,
    StandardExtremaAnalyzer,
)
from .interfaces import Analyzer, GrowthStrategy, NetworkContext, NetworkTrainer
from .strategies import (
    ExtremaGrowthStrategy,
    HybridGrowthStrategy,
    InformationFlowGrowthStrategy,
    PruningGrowthStrategy,
    ResidualBlockGrowthStrategy,
)
from .system import ComposableEvolutionSystem, EvolutionConfig
from .topology import HomologicalAnalyzer, TopologicalAnalyzer
from .trainer import StandardNetworkTrainer

__all__ = ["Analyzer", "ComposableEvolutionSystem", "EvolutionConfig", "ExtremaGrowthStrategy",
           "GraphAnalyzer", "GrowthStrategy", "HomologicalAnalyzer", "HybridGrowthStrategy",
           "InformationFlowGrowthStrategy", "NetworkContext", "NetworkStatsAnalyzer",
           "NetworkTrainer", "PruningGrowthStrategy", "ResidualBlockGrowthStrategy",
           "SimpleInformationFlowAnalyzer", "StandardExtremaAnalyzer", "StandardNetworkTrainer",
           "TopologicalAnalyzer", "create_standard_evolution_system"]


def create_standard_evolution_system(epochs: int = 5, learning_rate: float = 0.01
                                     ) -> ComposableEvolutionSystem:
    """The seed's standard system: `StandardExtremaAnalyzer` and `NetworkStatsAnalyzer`,
    `ExtremaGrowthStrategy` (revival and relief edges, a new layer where a third of a
    stage's neurons are extrema), `StandardNetworkTrainer(epochs, learning_rate)`."""
    system = ComposableEvolutionSystem()
    system.add_component(StandardExtremaAnalyzer())
    system.add_component(NetworkStatsAnalyzer())
    system.add_component(ExtremaGrowthStrategy(add_layer_on_extrema=True))
    system.add_component(StandardNetworkTrainer(epochs=epochs, learning_rate=learning_rate))
    return system
