"""Topological analyzers: persistent homology of activation point clouds
(`TopologicalAnalyzer`, Vietoris–Rips through ripser) and homology of the weighted connection
graph (`HomologicalAnalyzer`, exact, by union-find).

What is computed:

* `TopologicalAnalyzer`: for each hidden stage, the point cloud of the stage's outputs on up to
  ``max_points`` analysed samples (Euclidean), its Vietoris–Rips persistence diagrams up to
  dimension ``max_dim`` (ripser). A bar counts as a feature when its lifetime exceeds
  ``threshold`` × the cloud's diameter (infinite bars always count): ``betti`` are those
  counts per dimension (a circle: [1, 1]; two far clusters: [2, 0]); ``total_persistence``
  and ``max_persistence`` per dimension sum / maximise the finite lifetimes.
* `HomologicalAnalyzer`: the undirected connection graph with the edges of |w| above a
  threshold (`connection_graph`) is a 1-dimensional complex: b0 = its components, b1 = E − V +
  b0 (independent cycles; a layered network's graph has no triangles, so this equals the
  flag complex's homology). ``betti_curve`` gives (b0, b1) at each of ``thresholds`` (relative
  to the largest |w|); the H0 persistence over the filtration by decreasing |w| (strongest
  connections first, Kruskal) gives ``h0_bars``: the |w| at which each merge happened.

ripser is imported on first use (``pip install ripser``); the graph homology needs networkx
only for the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..checks import check_int, check_real
from .analyzers import connection_graph, stage_activations
from .interfaces import Analyzer, NetworkContext

__all__ = ["HomologicalAnalyzer", "TopologicalAnalyzer", "graph_betti", "h0_persistence",
           "persistence_summary", "rips_diagrams"]


def rips_diagrams(points: np.ndarray, max_dim: int = 1) -> list[np.ndarray]:
    """Vietoris–Rips persistence diagrams (ripser) of an (N, D) point cloud, dimensions
    0..max_dim: one (bars, 2) array of (birth, death) each."""
    try:
        from ripser import ripser
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("TopologicalAnalyzer needs ripser: pip install ripser") from e
    return ripser(np.asarray(points, dtype=np.float64), maxdim=max_dim)["dgms"]


def persistence_summary(diagrams: Sequence[np.ndarray], scale: float,
                        threshold: float) -> dict[str, list]:
    """``betti`` (bars living longer than ``threshold · scale``, infinite ones included),
    ``total_persistence`` and ``max_persistence`` (finite lifetimes) per dimension."""
    betti, total, longest = [], [], []
    for d in diagrams:
        life = d[:, 1] - d[:, 0]
        finite = np.isfinite(life)
        betti.append(int((~finite).sum() + (life[finite] > threshold * scale).sum()))
        total.append(float(life[finite].sum()))
        longest.append(float(life[finite].max()) if finite.any() else 0.0)
    return {"betti": betti, "total_persistence": total, "max_persistence": longest}


class TopologicalAnalyzer(Analyzer):
    """Persistent homology of each hidden stage's activation cloud (module docstring).

    Returns ``topology`` (per hidden stage: ``layer``, ``stage``, ``points``, ``betti``,
    ``total_persistence``, ``max_persistence``) and ``topological_complexity`` (the summed
    H1 total persistence, 0 without H1)."""

    def __init__(self, max_batches: int = 2, max_points: int = 200, max_dim: int = 1,
                 threshold: float = 0.1):
        self.max_batches = check_int("max_batches", max_batches, 1)
        self.max_points = check_int("max_points", max_points, 2)
        self.max_dim = check_int("max_dim", max_dim, 0, 2)
        self.threshold = check_real("threshold", threshold, 0)

    def analyze(self, context: NetworkContext) -> dict:
        """The persistence summaries of ``context.network``'s hidden stages."""
        net = context.network
        acts = stage_activations(net, context.analysis_batches(self.max_batches))
        out = []
        for s in net.hidden():
            x = torch.cat([a[s + 1] for a in acts])[:self.max_points].double().cpu().numpy()
            scale = float(np.linalg.norm(x.max(0) - x.min(0))) or 1.0  # bounding-box diameter
            summ = persistence_summary(rips_diagrams(x, self.max_dim), scale, self.threshold)
            out.append({"layer": s, "stage": int(net.stages[s].uid), "points": len(x),
                        **summ})
        h1 = sum(t["total_persistence"][1] for t in out) if self.max_dim >= 1 else 0.0
        return {"topology": out, "topological_complexity": h1}


def graph_betti(graph: Any) -> tuple[int, int]:
    """(b0, b1) of an undirected graph as a 1-complex: components and E − V + b0."""
    import networkx as nx

    u = graph.to_undirected() if graph.is_directed() else graph
    b0 = nx.number_connected_components(u)
    return b0, u.number_of_edges() - u.number_of_nodes() + b0


def h0_persistence(graph: Any) -> list[float]:
    """The |w| at which components merge when edges enter by decreasing |w| (every node
    present from the start): one value per merge, strongest first."""
    parent = {n: n for n in graph.nodes}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    merges = []
    edges = sorted(graph.to_undirected().edges(data="weight"), key=lambda e: -e[2])
    for a, b, w in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            merges.append(float(w))
    return merges


class HomologicalAnalyzer(Analyzer):
    """Homology of the weighted connection graph (module docstring).

    Args:
        thresholds: relative |w| thresholds (fractions of the largest |w|) of the Betti
            curve.

    Returns ``betti_0``, ``betti_1`` (all live connections), ``betti_curve`` (a [b0, b1]
    pair per threshold), ``h0_bars`` (merge weights, strongest first) and ``cycle_rank``
    (b1 / edges: the share of connections that close cycles).
    """

    def __init__(self, thresholds: Sequence[float] = (0.0, 0.25, 0.5)):
        self.thresholds = tuple(check_real(f"thresholds[{i}]", t, 0, 1)
                                for i, t in enumerate(thresholds))

    def analyze(self, context: NetworkContext) -> dict:
        """The graph homology of ``context.network``."""
        g = connection_graph(context.network)
        b0, b1 = graph_betti(g)
        wmax = max((w for *_, w in g.edges(data="weight")), default=0.0)
        curve = []
        for t in self.thresholds:
            sub = g.copy()
            sub.remove_edges_from([(a, b) for a, b, w in g.edges(data="weight")
                                   if w <= t * wmax and t > 0])
            curve.append(list(graph_betti(sub)))
        return {"betti_0": b0, "betti_1": b1, "betti_curve": curve,
                "h0_bars": h0_persistence(g), "cycle_rank": b1 / max(1, g.number_of_edges())}
