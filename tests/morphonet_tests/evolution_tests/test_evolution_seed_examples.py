"""Item 7 of issue 20: the seed's README examples run as written (copied verbatim below), with a
local data loader for ``create_your_dataloader()`` and the names the README leaves to the
reader."""

import torch
from torch.utils.data import DataLoader, TensorDataset

QUICK_START = r"""
import torch
from structure_net import create_standard_network
from structure_net.evolution.components import (
    create_standard_evolution_system,
    NetworkContext
)

# Create a sparse network
network = create_standard_network(
    architecture=[784, 256, 128, 10],
    sparsity=0.01
)

# Setup device and data
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
network.to(device)

# Create dataset (using your actual data)
train_loader = create_your_dataloader()

# Create evolution system and evolve
evolution_system = create_standard_evolution_system()
context = NetworkContext(network, train_loader, device)
evolved_context = evolution_system.evolve_network(context, num_iterations=5)

print(f"Network grew from {context.network.get_network_stats()['total_connections']} to "
      f"{evolved_context.network.get_network_stats()['total_connections']} connections")
"""

CUSTOM_PIPELINE = r"""
from structure_net.evolution.components import (
    ComposableEvolutionSystem,
    StandardExtremaAnalyzer,
    ExtremaGrowthStrategy,
    StandardNetworkTrainer
)

# Build custom evolution system
evolution_system = ComposableEvolutionSystem()

# Add analyzer to detect dead/saturated neurons
evolution_system.add_component(
    StandardExtremaAnalyzer(
        max_batches=10,
        dead_threshold=0.01,
        saturated_multiplier=2.5
    )
)

# Add growth strategy
evolution_system.add_component(
    ExtremaGrowthStrategy(
        extrema_threshold=0.3,
        patch_size=20,
        add_layer_on_extrema=True
    )
)

# Add trainer
evolution_system.add_component(
    StandardNetworkTrainer(epochs=5, learning_rate=0.01)
)

# Evolve network
evolved_context = evolution_system.evolve_network(context, num_iterations=3)
"""

CUSTOM_ANALYZER = r"""
from structure_net.evolution.interfaces import Analyzer
from structure_net.evolution.components import NetworkContext

class MyCustomAnalyzer(Analyzer):
    def analyze(self, context: NetworkContext) -> dict:
        # Perform your analysis
        metrics = {
            "my_metric": compute_something(context.network),
            "another_metric": analyze_something_else(context)
        }
        return metrics
"""

CUSTOM_STRATEGY = r"""
from structure_net.evolution.interfaces import GrowthStrategy
from structure_net.evolution.components import NetworkContext

class MyGrowthStrategy(GrowthStrategy):
    def should_grow(self, context: NetworkContext, analysis: dict) -> bool:
        # Decide whether to grow based on analysis
        return analysis.get("my_metric", 0) > self.threshold

    def grow(self, context: NetworkContext, analysis: dict) -> NetworkContext:
        # Implement growth logic
        # Modify network architecture
        return updated_context
"""

PHASED = r"""
# Phase 1: Coarse structure (few connections, basic topology)
coarse_system = ComposableEvolutionSystem()
coarse_system.add_component(StandardExtremaAnalyzer())
coarse_system.add_component(ExtremaGrowthStrategy(patch_size=50))
coarse_system.add_component(StandardNetworkTrainer(epochs=10))

# Phase 2: Medium detail (add layers, increase connectivity)
medium_system = ComposableEvolutionSystem()
medium_system.add_component(StandardExtremaAnalyzer())
medium_system.add_component(ExtremaGrowthStrategy(add_layer_on_extrema=True))
medium_system.add_component(StandardNetworkTrainer(epochs=5))

# Phase 3: Fine detail (optimize connections, add residuals)
fine_system = ComposableEvolutionSystem()
fine_system.add_component(SimpleInformationFlowAnalyzer())
fine_system.add_component(ResidualBlockGrowthStrategy())
fine_system.add_component(StandardNetworkTrainer(epochs=3))

# Execute phased evolution
context = NetworkContext(network, train_loader, device)
context = coarse_system.evolve_network(context, num_iterations=3)
context = medium_system.evolve_network(context, num_iterations=2)
context = fine_system.evolve_network(context, num_iterations=1)
"""


def create_your_dataloader(features: int = 784, classes: int = 10, rows: int = 256):
    """The local loader: ``rows`` examples whose class is the argmax of a fixed random
    projection, batches of 32, shuffled."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=g)
    y = (x @ torch.randn(features, classes, generator=g)).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def _run(code: str, **names) -> dict:
    ns = {"__name__": "seed_example", **names}
    exec(compile(code, "seed_example", "exec"), ns)
    return ns


def test_quick_start(capsys):
    torch.manual_seed(0)
    ns = _run(QUICK_START, create_your_dataloader=create_your_dataloader)
    before = ns["context"].network.get_network_stats()["total_connections"]
    after = ns["evolved_context"].network.get_network_stats()["total_connections"]
    assert after > before
    assert f"Network grew from {before} to {after} connections" in capsys.readouterr().out
    assert len(ns["evolved_context"].evolution_log) == 5


def test_custom_pipeline_then_phased_evolution():
    """The custom pipeline (its ``context`` from the quick start's setup), then the
    coarse → medium → fine phases on a network of the reader's."""
    from structure_net import create_standard_network
    from structure_net.evolution.components import NetworkContext

    torch.manual_seed(0)
    loader = create_your_dataloader(features=32, rows=128)
    network = create_standard_network([32, 24, 16, 10], sparsity=0.1, seed=0)
    context = NetworkContext(network, loader, "cpu")
    ns = _run(CUSTOM_PIPELINE, context=context)
    evolved = ns["evolved_context"]
    assert len(evolved.evolution_log) == 3 and len(evolved.history) == 15
    assert evolved.evolution_log[0]["events"][0]["strategy"] == "ExtremaGrowthStrategy"
    import structure_net.evolution.components as comps

    names = {n: getattr(comps, n) for n in comps.__all__}
    ns = _run(PHASED, network=network, train_loader=loader, device="cpu", **names)
    final = ns["context"]
    assert len(final.evolution_log) == 3 + 2 + 1
    assert len(final.history) == 3 * 10 + 2 * 5 + 1 * 3
    assert final.network.get_network_stats()["residual_blocks"] >= 1  # the fine phase's
    changes = [e["output_change"] for r in final.evolution_log for e in r["events"]]
    assert changes and max(changes) <= 1e-5


def test_custom_analyzer_and_strategy_classes():
    """The README's subclasses, as written (their bodies call the reader's functions:
    ``compute_something``, ``analyze_something_else``; ``grow`` returns the reader's
    ``updated_context``)."""
    from structure_net import create_standard_network
    from structure_net.evolution.components import (
        ComposableEvolutionSystem,
        StandardNetworkTrainer,
    )

    seen = []
    ns = _run(CUSTOM_ANALYZER, compute_something=lambda net: net.get_network_stats()[
        "total_connections"], analyze_something_else=lambda ctx: len(ctx.history))
    MyCustomAnalyzer = ns["MyCustomAnalyzer"]
    ns2 = _run(CUSTOM_STRATEGY)
    MyGrowthStrategy = ns2["MyGrowthStrategy"]

    class Recording(MyGrowthStrategy):
        threshold = 10 ** 9  # the README reads self.threshold without setting it

        def should_grow(self, context, analysis):
            seen.append(dict(analysis))
            return super().should_grow(context, analysis)

    net = create_standard_network([32, 16, 10], sparsity=0.1, seed=0)
    context = ns["NetworkContext"](net, create_your_dataloader(features=32, rows=64), "cpu")
    system = ComposableEvolutionSystem()
    system.add_component(MyCustomAnalyzer())
    system.add_component(Recording())
    system.add_component(StandardNetworkTrainer(epochs=1))
    system.evolve_network(context, num_iterations=2)
    assert seen[0] == {"my_metric": net.get_network_stats()["total_connections"],
                       "another_metric": 0}
    assert seen[1]["another_metric"] == 1
