"""Item 3 of issue 20: the topological analyzers, checked on inputs with known Betti
numbers."""

import math

import networkx as nx
import numpy as np
import pytest
import torch

import morphonet.evolution as evo
from morphonet.evolution.topology import graph_betti, h0_persistence, persistence_summary

ripser = pytest.importorskip("ripser")
from morphonet.evolution.topology import rips_diagrams  # noqa: E402


def _circle(n=60, r=1.0, c=(3.0, 3.0)):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1)


@pytest.mark.parametrize("cloud, betti", [
    (_circle(), [1, 1]),
    (np.concatenate([_circle(r=0.1), _circle(r=0.1, c=(9.0, 9.0))]), [2, 0]),  # two blobs
    (np.concatenate([_circle(), _circle(c=(9.0, 3.0))]), [2, 2]),  # two circles
    (np.stack(np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 9)), -1).reshape(-1, 2),
     [1, 0]),  # a filled square (a grid)
])
def test_rips_betti_numbers_of_known_clouds(cloud, betti):
    scale = float(np.linalg.norm(cloud.max(0) - cloud.min(0)))
    assert persistence_summary(rips_diagrams(cloud, 1), scale, 0.1)["betti"] == betti


def test_topological_analyzer_sees_the_circle_a_layer_carries():
    """A ReLU stage with identity weights passes a circle in the positive quadrant through:
    its activation cloud has Betti numbers [1, 1]; the logits of a rank-1 stage collapse it
    (no H1)."""
    net = evo.create_standard_network([2, 2, 2, 2], 0.5, seed=0)
    from morpho_kernels.formats import EdgeList

    for s, w in ((0, [[1.0, 0.0], [0.0, 1.0]]), (1, [[1.0, 1.0], [0.0, 0.0]])):
        lay = net.stages[s].layer
        e = EdgeList.from_dense(torch.ones(2, 2))
        lay.row_ptr, lay.col, lay._edges_cache = e.row_ptr, e.col, e
        with torch.no_grad():
            lay.values.data = torch.tensor(w).flatten()
            lay.bias.data = torch.zeros(2)
    x = torch.tensor(_circle(64), dtype=torch.float32)
    ctx = evo.NetworkContext(net, (x, torch.zeros(64).long()), batch_size=32)
    r = evo.TopologicalAnalyzer(max_batches=2, max_points=64).analyze(ctx)
    first, second = r["topology"]
    assert first["betti"] == [1, 1] and first["points"] == 64
    assert first["max_persistence"][1] == pytest.approx(math.sqrt(3) - 0.1, abs=0.05)
    assert second["betti"][1] == 0  # x0 + x1 (and a zero neuron): a line, no loop
    assert r["topological_complexity"] == pytest.approx(
        first["total_persistence"][1] + second["total_persistence"][1])
    # threshold honoured: nothing persists longer than the whole diameter
    r = evo.TopologicalAnalyzer(threshold=1.0).analyze(ctx)
    assert r["topology"][0]["betti"] == [1, 0]


def test_graph_homology_known_graphs():
    assert graph_betti(nx.cycle_graph(4)) == (1, 1)
    assert graph_betti(nx.balanced_tree(2, 3)) == (1, 0)
    g = nx.disjoint_union(nx.complete_graph(3), nx.path_graph(3))
    assert graph_betti(g) == (2, 1)
    w = nx.Graph()
    w.add_weighted_edges_from([(0, 1, 3.0), (1, 2, 2.0), (0, 2, 1.0), (3, 4, 0.5)])
    assert h0_persistence(w) == [3.0, 2.0, 0.5]  # the 1.0 edge closes a cycle


def test_homological_analyzer_on_a_known_network():
    """inputs ↔ hidden fully connected (K2,2: one cycle), both hidden → out0 (a second
    cycle), out1 isolated: b0 = 2, b1 = 2; above half the largest |w| only in0 → h0 → out0
    and in1 → h1 remain."""
    from morpho_kernels.formats import EdgeList

    net = evo.create_standard_network([2, 2, 2], 0.5, seed=0)
    for s, src, dst, vals in ((0, [0, 1, 0, 1], [0, 0, 1, 1], [2.0, 0.4, 0.3, -1.5]),
                              (1, [0, 1], [0, 0], [1.2, 0.2])):
        lay = net.stages[s].layer
        e = EdgeList.from_coo(torch.tensor(src), torch.tensor(dst), 2, 2)
        lay.row_ptr, lay.col, lay._edges_cache = e.row_ptr, e.col, e
        with torch.no_grad():
            lay.values.data = torch.tensor(vals)
    ctx = evo.NetworkContext(net, (torch.zeros(2, 2), torch.zeros(2).long()))
    r = evo.HomologicalAnalyzer(thresholds=(0.0, 0.5)).analyze(ctx)
    assert (r["betti_0"], r["betti_1"]) == (2, 2)
    # > 1.0: 2.0 (in0-h0), 1.5 (in1-h1), 1.2 (h0-out0): components {in0,h0,out0}, {in1,h1},
    # {out1}
    assert r["betti_curve"] == [[2, 2], [3, 0]]
    assert r["h0_bars"] == pytest.approx([2.0, 1.5, 1.2, 0.4])
    assert r["cycle_rank"] == pytest.approx(2 / 6)
