"""ConnectionRouter: where new structure goes. High-extrema neurons send new connections to
low-extrema neurons up to ``radius`` layers ahead; saturated neurons are cloned.

Rules (RouterConfig):

* **sources**: high extrema of layers 0 … L−1 (input features that are often > 1 std count as
  high), visited in random order; each source that finds a target makes one **structure**.
* **targets**: the low extrema (dead / saturated-low neurons, which need input) of the layers
  i+1 … i+radius; when fewer than the fan-out are available, **quiet** neurons (no signal over
  the window, see extrema.py) of those layers are the fallback. Logit neurons (the output
  layer) are never extrema, so they are reached only as quiet neurons. A pair that already is
  an edge is not proposed again.
* **fan-out**: 3 or 4 (drawn per source) new connections per structure; among the allowed
  targets the ones with the largest dense gradient |∂L/∂W| (morpho_kernels.dense_grad_at at
  the candidate pairs, from one scoring batch) come first, ties broken at random.
* **at most ``max_incoming`` (5) new incoming connections per neuron per growth event** (load
  balancing within a routing round; existing edges are not capped).
* **reciprocal** (probability 0.2 per routed edge s → t): a feed-forward net has no edge back
  from t to s, so the reciprocal of s → t is the edge t → u that *returns t's new signal to
  the path s feeds*: u is a neuron of a layer after t (within the radius of t) that s already
  reaches (an existing or new target of s), or else the highest-scoring active neuron of the
  layer after t. It belongs to the same structure.
* **initial value** of a routed edge s → t: −sign(g)·init_scale·gain/√(in-degree of t after
  growth), g the dense gradient (random sign where g = 0): a small step down the loss.
* **vertical cloning**: up to ``clones_per_event`` (1) high-extremum hidden neurons whose
  high share is ≥ ``clone_share`` (0.5: saturated on at least half the window's samples; at
  0.9 no neuron was ever cloned in the digits runs, at 0.5 5–12 per run with validation
  accuracy 92.7% vs 93.2%, within the seed spread) are cloned, the most saturated first
  (MinimalNetwork.clone_neuron: function-preserving, clone at ``clone_scale`` = 0.7 of the
  outgoing weights). One clone is one structure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import Tensor

from morpho_kernels import dense_grad_at

from .extrema import LayerExtrema
from .network import _GAIN, MinimalNetwork


@dataclass
class RouterConfig:
    """Settings of ConnectionRouter (see the module docstring)."""

    radius: int = 3
    fan_out: tuple[int, int] = (3, 4)
    max_incoming: int = 5
    reciprocal_p: float = 0.2
    init_scale: float = 1.0
    clone_scale: float = 0.7
    clone_share: float = 0.5
    clones_per_event: int = 1

    def __post_init__(self):
        self.fan_out = tuple(self.fan_out)
        if len(self.fan_out) != 2 or not 1 <= self.fan_out[0] <= self.fan_out[1]:
            raise ValueError(f"fan_out must be (min, max) with 1 <= min <= max, got "
                             f"{self.fan_out!r}")
        for name in ("radius", "max_incoming"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0.0 <= self.reciprocal_p <= 1.0:
            raise ValueError(f"reciprocal_p must be in [0, 1], got {self.reciprocal_p!r}")
        if not 0.0 < self.clone_scale < 1.0:
            raise ValueError(f"clone_scale must be in (0, 1), got {self.clone_scale!r}")
        if not isinstance(self.clones_per_event, int) or self.clones_per_event < 0:
            raise ValueError(f"clones_per_event must be an int >= 0, got "
                             f"{self.clones_per_event!r}")

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RouterConfig:
        """Inverse of to_dict."""
        return cls(**d)


@dataclass
class Structure:
    """One routed group or one cloned neuron.

    kind: ``"route"`` or ``"clone"``. source: (layer, neuron). edges: routed (i, src, j, dst,
    value) tuples; reciprocal: the reciprocal edges in the same form; clone: (layer, new index)
    after apply for a clone."""

    kind: str
    source: tuple[int, int]
    edges: list = field(default_factory=list)
    reciprocal: list = field(default_factory=list)
    clone: Optional[tuple[int, int]] = None

    @property
    def n_connections(self) -> int:
        """Routed plus reciprocal edges of the structure."""
        return len(self.edges) + len(self.reciprocal)


class ConnectionRouter:
    """Plans and applies growth: ``grow(network, extrema, max_structures, optimizer)``."""

    def __init__(self, config: Optional[RouterConfig] = None, seed: Optional[int] = None):
        if config is not None and not isinstance(config, RouterConfig):
            raise TypeError(f"config must be a RouterConfig, got {type(config).__name__}")
        self.config = config or RouterConfig()
        self.gen = torch.Generator().manual_seed(seed if seed is not None else 0)

    # -- helpers
    def _rand(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.gen)

    def _grads(self, net: MinimalNetwork, i: int, j: int, sources: Tensor) -> Tensor:
        """(cap_j, cap_i) dense gradient ∂L/∂W at (t ← s) for the given sources' columns
        (morpho_kernels.dense_grad_at at every source × target pair), zeros elsewhere and
        without scoring data."""
        key = (i, j)
        if key in self._g:
            return self._g[key]
        g = torch.zeros(net.capacity[j], net.capacity[i])
        h, dz = net.activations, net.pre_grads
        if sources.numel() and j in dz and len(h) > i:
            t = torch.arange(net.capacity[j])
            src, dst = sources.repeat_interleave(t.numel()), t.repeat(sources.numel())
            g[dst, src] = dense_grad_at(h[i], dz[j], src, dst).float()
        self._g[key] = g
        return g

    # -- planning
    def plan(self, net: MinimalNetwork, extrema: list[LayerExtrema],
             max_structures: int) -> list[Structure]:
        """Structures for one growth event (clones first, then routed groups), at most
        ``max_structures``. Uses ``net.activations`` / ``net.pre_grads`` of the last scored
        batch for the gradient ranking when present."""
        if not isinstance(net, MinimalNetwork):
            raise TypeError(f"net must be a MinimalNetwork, got {type(net).__name__}")
        if len(extrema) != net.n_layers + 1:
            raise ValueError(f"extrema must have one entry per layer ({net.n_layers + 1}), got "
                             f"{len(extrema)}")
        if isinstance(max_structures, bool) or not isinstance(max_structures, int) or \
                max_structures < 0:
            raise ValueError(f"max_structures must be an int >= 0, got {max_structures!r}")
        self._g: dict[tuple[int, int], Tensor] = {}
        self._sources: dict[int, Tensor] = {}
        try:
            out = self._plan_clones(net, extrema, max_structures)
            return out + self._plan_routes(net, extrema, max_structures - len(out))
        finally:
            self._g = {}

    def _plan_clones(self, net, extrema, budget) -> list[Structure]:
        c, cands = self.config, []
        for j in range(1, net.n_layers):
            if bool(net.active(j).all()):
                continue
            e = extrema[j]
            share = e.high_share if net.activation != "relu" else e.high.float()
            ok = e.high & (share >= c.clone_share)
            for n in ok.nonzero().flatten().tolist():
                cands.append((float(share[n]), j, n))
        cands.sort(reverse=True)
        per_layer_free = {j: int((~net.active(j)).sum()) for j in range(1, net.n_layers)}
        out = []
        for _, j, n in cands:
            if len(out) >= min(budget, c.clones_per_event):
                break
            if per_layer_free[j] > 0:
                per_layer_free[j] -= 1
                out.append(Structure("clone", (j, n)))
        return out

    def _plan_routes(self, net, extrema, budget) -> list[Structure]:
        L = net.n_layers
        if budget <= 0:
            return []
        exists = {k: net.conn[k].edges.to_dense() > 0 for k in net.conn}  # (out, in) masks
        indeg = {j: torch.zeros(net.capacity[j], dtype=torch.long) for j in range(1, L + 1)}
        for (i, j) in net.pairs():
            indeg[j] += net.layer(i, j).edges.fan_in()
        new_in = {j: torch.zeros(net.capacity[j], dtype=torch.long) for j in range(1, L + 1)}
        sources = [(i, n) for i in range(L) for n in extrema[i].high.nonzero().flatten().tolist()]
        perm = torch.randperm(len(sources), generator=self.gen).tolist()
        chosen = [sources[p] for p in perm]
        for i in range(L):  # gradients are computed for the sources that may be visited
            self._sources[i] = torch.tensor([n for ii, n in chosen[:4 * budget] if ii == i],
                                            dtype=torch.long)
        out = []
        for i, s in chosen:
            if len(out) >= budget:
                break
            st = self._route_one(net, extrema, i, s, exists, indeg, new_in)
            if st is not None:
                out.append(st)
        return out

    def _candidates(self, net, extrema, i, s, layers, kind, exists, new_in, taken):
        """(layer, neuron, grad) tensors of the allowed targets of source (i, s)."""
        js, ts, gs = [], [], []
        for j in layers:
            e = extrema[j]
            m = (e.low if kind == "low" else e.quiet) & (new_in[j] < self.config.max_incoming)
            m = m & ~exists[net.key(i, j)][:, s] & ~taken[j]
            t = m.nonzero().flatten()
            js.append(torch.full_like(t, j))
            ts.append(t)
            gs.append(self._grads(net, i, j, self._src_of(i, s))[t, s])
        return torch.cat(js), torch.cat(ts), torch.cat(gs)

    def _src_of(self, i: int, s: int) -> Tensor:
        src = self._sources.get(i, torch.zeros(0, dtype=torch.long))
        if not bool((src == s).any()):
            self._g = {k: v for k, v in self._g.items() if k[0] != i}  # recompute with s
            src = self._sources[i] = torch.cat([src, torch.tensor([s])])
        return src

    def _route_one(self, net, extrema, i, s, exists, indeg, new_in) -> Optional[Structure]:
        c, L = self.config, net.n_layers
        lo, hi = c.fan_out
        k = lo + int(torch.randint(hi - lo + 1, (1,), generator=self.gen))
        layers = range(i + 1, min(i + c.radius, net.max_skip + i, L) + 1)
        taken = {j: torch.zeros(net.capacity[j], dtype=torch.bool) for j in layers}
        picked: list[tuple[int, int, float]] = []  # (j, t, g)
        for kind in ("low", "quiet"):  # quiet only as the fallback
            js, ts, gs = self._candidates(net, extrema, i, s, layers, kind, exists, new_in,
                                          taken)
            if not ts.numel():
                continue
            key = gs.abs() + 1e-12 * self._rand(ts.numel())  # largest |grad|, random ties
            top = torch.topk(key, min(k - len(picked), ts.numel())).indices
            for q in top.tolist():
                picked.append((int(js[q]), int(ts[q]), float(gs[q])))
                taken[int(js[q])][int(ts[q])] = True
            if len(picked) >= k:
                break
        if not picked:
            return None
        st = Structure("route", (i, s))
        for j, t, g in picked:
            st.edges.append((i, s, j, t, self._init_value(net, g, indeg[j][t])))
            exists[net.key(i, j)][t, s] = True
            new_in[j][t] += 1
            indeg[j][t] += 1
        for j, t, _ in picked:
            if j < L and float(self._rand(1)) < c.reciprocal_p:
                r = self._reciprocal(net, st, j, t, exists, indeg, new_in)
                if r is not None:
                    st.reciprocal.append(r)
        return st

    def _reciprocal(self, net, st, j, t, exists, indeg, new_in):
        """The edge t → u (see the module docstring) or None if no u is free."""
        c, L = self.config, net.n_layers
        i, s = st.source
        last = min(j + c.radius, j + net.max_skip, L)
        reach = []  # neurons s reaches in layers after j
        for m in range(j + 1, last + 1):
            if m - i <= net.max_skip:
                reach += [(m, int(u)) for u in exists[net.key(i, m)][:, s].nonzero().flatten()]
        free = [(m, u) for m, u in reach
                if new_in[m][u] < c.max_incoming and not exists[net.key(j, m)][u, t]]
        if not free:
            m = j + 1
            cand = (net.active(m) & (new_in[m] < c.max_incoming)
                    & ~exists[net.key(j, m)][:, t]).nonzero().flatten()
            if not cand.numel():
                return None
            g = self._grads(net, j, m, self._src_of(j, t))[cand, t]
            key = g.abs() + 1e-12 * self._rand(cand.numel())
            free = [(m, int(cand[int(torch.argmax(key))]))]
        m, u = free[int(torch.randint(len(free), (1,), generator=self.gen))]
        g = float(self._grads(net, j, m, self._src_of(j, t))[u, t])
        exists[net.key(j, m)][u, t] = True
        new_in[m][u] += 1
        indeg[m][u] += 1
        return (j, t, m, u, self._init_value(net, g, indeg[m][u]))

    def _init_value(self, net, g: float, indeg_before) -> float:
        sign = -math.copysign(1.0, g) if g != 0.0 else (1.0 if float(self._rand(1)) < 0.5
                                                         else -1.0)
        return sign * self.config.init_scale * _GAIN[net.activation] / math.sqrt(
            float(indeg_before) + 1.0)

    # -- applying
    def apply(self, net: MinimalNetwork, structures: list[Structure],
              optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
        """Insert every planned edge (one grow per layer pair) and clone the planned neurons;
        returns {"connections_added" (every new edge, the clones' included), "neurons_added",
        "structures"}."""
        groups: dict[tuple[int, int], list] = {}
        neurons = 0
        nnz0 = sum(lay.nnz for lay in net.conn.values())
        for st in structures:
            if st.kind == "clone":
                j, n = st.source
                st.clone = (j, net.clone_neuron(j, n, self.config.clone_scale, optimizer))
                neurons += 1
            for (i, s, j, t, v) in st.edges + st.reciprocal:
                groups.setdefault((i, j), []).append((s, t, v))
        for (i, j), rows in groups.items():
            src = torch.tensor([r[0] for r in rows], dtype=torch.long)
            dst = torch.tensor([r[1] for r in rows], dtype=torch.long)
            val = torch.tensor([r[2] for r in rows], dtype=torch.float32)
            net.add_connections(i, j, src, dst, val, optimizer=optimizer)
        added = sum(lay.nnz for lay in net.conn.values()) - nnz0  # routed + the clones' edges
        return {"connections_added": added, "neurons_added": neurons,
                "structures": len(structures)}

    def grow(self, net: MinimalNetwork, extrema: list[LayerExtrema], max_structures: int,
             optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
        """plan + apply; the result also lists the structures under ``"planned"``."""
        plan = self.plan(net, extrema, max_structures)
        res = self.apply(net, plan, optimizer)
        res["planned"] = plan
        return res
