"""Item 3 of issue 20: analyzers that honour their arguments, checked on known answers."""

import math

import pytest
import torch

import morphonet.evolution as evo
from morphonet.evolution.analyzers import layer_codes, plugin_mutual_information


def _set_layer(layer, weight, bias):
    """Give a StandardSparseLayer the dense ``weight`` (every entry an edge) and ``bias``."""
    from morpho_kernels.formats import EdgeList

    out_f, in_f = weight.shape
    e = EdgeList.from_dense(torch.ones(out_f, in_f))
    layer.row_ptr, layer.col, layer._edges_cache = e.row_ptr, e.col, e
    with torch.no_grad():
        layer.values.data = weight.flatten().clone()
        layer.bias.data = bias.clone()


def _known_net():
    """[2, 4, 2] ReLU net whose hidden neurons are relu(x0), relu(0.5·x0), relu(−1) (dead)
    and relu(10·x0)."""
    net = evo.create_standard_network([2, 4, 2], 0.5, seed=0)
    w = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [10.0, 0.0]])
    _set_layer(net.stages[0].layer, w, torch.tensor([0.0, 0.0, -1.0, 0.0]))
    return net


def test_extrema_analyzer_honours_thresholds_and_batches():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat(8, 1)  # x0 ∈ {1, 0}: mean 0.5
    y = torch.zeros(16).long()
    net = _known_net()
    # mean |h| per neuron: 0.5, 0.25, 0, 5; layer average 1.4375
    ctx = evo.NetworkContext(net, (x, y), batch_size=4)
    r = evo.StandardExtremaAnalyzer(max_batches=3, dead_threshold=0.01,
                                    saturated_multiplier=2.5).analyze(ctx)
    p = r["extrema_patterns"][0]
    assert (p["dead"], p["saturated"], p["zero"]) == ([2], [3], [2])
    assert r["extrema_batches"] == 3 and r["hidden_neurons"] == 4
    assert r["extrema_ratio"] == pytest.approx(2 / 4)
    assert p["mean_abs"] == pytest.approx((0.5 + 0.25 + 0 + 5) / 4)
    # a higher dead threshold: 0.25 < 0.3 is dead too; a higher multiplier: nothing saturated
    r = evo.StandardExtremaAnalyzer(dead_threshold=0.3, saturated_multiplier=4.0).analyze(ctx)
    p = r["extrema_patterns"][0]
    assert (p["dead"], p["saturated"]) == ([1, 2], [])
    r = evo.StandardExtremaAnalyzer(max_batches=1).analyze(ctx)
    assert r["extrema_batches"] == 1
    with pytest.raises(ValueError, match="saturated_multiplier"):
        evo.StandardExtremaAnalyzer(saturated_multiplier=0.5)


def test_plugin_mutual_information_known_answers():
    y4 = torch.arange(400) % 4
    assert plugin_mutual_information(y4, y4) == pytest.approx(2.0)  # H(Y), 4 balanced classes
    assert plugin_mutual_information(torch.zeros(400), y4) == pytest.approx(0.0, abs=1e-12)
    i = torch.arange(400)
    assert plugin_mutual_information(i % 2, (i // 2) % 2) == pytest.approx(0.0, abs=1e-12)
    assert plugin_mutual_information(y4 // 2, y4) == pytest.approx(1.0)  # half of it
    # a binary symmetric channel with flip rate 1/4: 1 − H(1/4)
    lab = i % 2
    code = lab ^ ((i // 2) % 4 == 0).long()
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert plugin_mutual_information(code, lab) == pytest.approx(1 - h)
    codes = layer_codes(torch.tensor([[0.0, 5.0], [1.0, 5.0], [0.4, 5.0], [0.6, 5.0]]), 2)
    assert codes.tolist() == [[0, 0], [1, 0], [0, 0], [1, 0]]


def test_information_flow_finds_the_bottleneck():
    """Input → hidden copies x0 (the label) and drops x1 → a stage that kills everything:
    the second hidden stage carries 0 bits and is the bottleneck."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(256) % 2
    x = torch.stack([y.float() * 2 - 1 + 0.1 * torch.randn(256, generator=g),
                     torch.randn(256, generator=g)], 1)
    net = evo.create_standard_network([2, 3, 3, 2], 0.5, seed=0)
    _set_layer(net.stages[0].layer, torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]),
               torch.zeros(3))
    _set_layer(net.stages[1].layer, -torch.ones(3, 3), -torch.ones(3))  # all dead
    ctx = evo.NetworkContext(net, (x, y), batch_size=64)
    r = evo.SimpleInformationFlowAnalyzer(max_batches=4, bins=2, min_loss=0.5).analyze(ctx)
    flow = r["information_flow"]
    assert r["label_entropy"] == pytest.approx(1.0)
    assert flow[1] == pytest.approx(1.0)  # relu(±x0) separates the classes exactly
    assert flow[2] == pytest.approx(0.0, abs=1e-12)
    assert r["bottlenecks"] == [net.stages[1].uid]
    assert r["layer_information"][1]["loss"] == pytest.approx(1.0)
    # min_loss honoured: nothing loses more than 1.5 bits
    assert evo.SimpleInformationFlowAnalyzer(min_loss=1.5).analyze(ctx)["bottlenecks"] == []


def test_equal_estimates_are_no_bottleneck_at_min_loss_zero():
    """Wide layers: every code is distinct, so input and hidden estimates all equal H(Y)
    (up to float rounding); at min_loss = 0 none is a bottleneck, and every hidden stage is
    reported saturated."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 64, generator=g)
    y = torch.arange(320) % 10
    net = evo.create_standard_network([64, 160, 80, 10], 0.1, "tanh", seed=0)
    ctx = evo.NetworkContext(net, (x, y), batch_size=32)
    r = evo.SimpleInformationFlowAnalyzer(max_batches=10, min_loss=0.0).analyze(ctx)
    h = r["label_entropy"]
    assert h == pytest.approx(math.log2(10))
    assert all(f == pytest.approx(h, abs=1e-9) for f in r["information_flow"][:3])
    assert r["bottlenecks"] == []
    assert r["saturated_layers"] == 2 and all(p["saturated"] for p in r["layer_information"])
    # the rounding the tolerance absorbs: a loss of a few ulps is not a bottleneck either
    assert all(abs(p["loss"]) <= 1e-9 for p in r["layer_information"])


def test_tolerance_separates_rounding_from_a_real_loss(monkeypatch):
    """A loss of 1e-15 bits (rounding) is no bottleneck at min_loss = 0; 0.25 bits is."""
    import morphonet.evolution.analyzers as an

    net = evo.create_standard_network([3, 4, 4, 2], 0.5, seed=0)
    ctx = evo.NetworkContext(net, (torch.randn(16, 3), torch.arange(16) % 2), batch_size=8)
    for flow, expect in (([1.0, 1.0 - 1e-15, 1.0 - 2e-15, 1.0], []),
                         ([1.0, 1.0, 0.75, 0.75], [net.stages[1].uid])):
        it = iter(flow)
        monkeypatch.setattr(an, "plugin_mutual_information",
                            lambda c, y, it=it: next(it, 1.0))
        r = an.SimpleInformationFlowAnalyzer(max_batches=2, min_loss=0.0).analyze(ctx)
        assert r["bottlenecks"] == expect


def test_projected_estimate_does_not_saturate():
    """components=k bins the top k principal coordinates: at most 2^k codes, so a wide
    layer's estimate stays at most k bits, below H(Y) (log2 10); an input whose main
    direction is the label scores well."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 10
    signal = (y.float() - 4.5)[:, None] * torch.ones(1, 60)
    x = torch.cat([signal + 0.1 * torch.randn(400, 60, generator=g),
                   torch.randn(400, 4, generator=g)], 1)
    net = evo.create_standard_network([64, 160, 80, 10], 0.1, "tanh", seed=0)
    ctx = evo.NetworkContext(net, (x, y), batch_size=40)
    proj = evo.SimpleInformationFlowAnalyzer(max_batches=10, min_loss=0.0,
                                             components=2).analyze(ctx)
    assert all(f <= 2.0 + 1e-9 for f in proj["information_flow"])  # 2 components, 2 bins
    assert proj["information_flow"][0] > 0.8  # the label direction is the main one
    assert proj["saturated_layers"] == 0
    from morphonet.evolution.analyzers import principal_projection

    p = principal_projection(torch.randn(50, 7, generator=g), 3)
    assert p.shape == (50, 3)
    torch.testing.assert_close(p.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_network_stats_analyzer():
    net = evo.create_standard_network([5, 6, 3], 0.5, seed=0)
    net.add_residual_block(0, hidden=2)
    ctx = evo.NetworkContext(net, (torch.randn(4, 5), torch.zeros(4).long()))
    r = evo.NetworkStatsAnalyzer().analyze(ctx)
    blocks = net.stages[0].blocks[0]
    assert r["total_connections"] == (net.stages[0].layer.nnz + net.stages[1].layer.nnz
                                      + blocks.first.nnz + blocks.second.nnz)
    assert r["residual_blocks"] == 1 and r["architecture"] == [5, 6, 3]
    assert r["connectivity"] == pytest.approx(
        (net.stages[0].layer.nnz + net.stages[1].layer.nnz) / (30 + 18))


def _edges(layer, src, dst, values):
    from morpho_kernels.formats import EdgeList

    e = EdgeList.from_coo(torch.tensor(src), torch.tensor(dst), layer.in_features,
                          layer.out_features)
    layer.row_ptr, layer.col, layer._edges_cache = e.row_ptr, e.col, e
    with torch.no_grad():
        layer.values.data = torch.tensor(values)  # slots in (dst, src) order


def test_graph_analyzer_known_graph_and_threshold():
    """in0 → h0 (1.0), in1 → h0 (0.05), in1 → h1 (2.0); h0 → out0 (1.0): h1 is a dead end,
    out1 unreachable and isolated, h0 the only intermediate on input → output paths."""
    net = evo.create_standard_network([2, 2, 2], 0.5, seed=0)
    _edges(net.stages[0].layer, [0, 1, 1], [0, 0, 1], [1.0, 0.05, 2.0])
    _edges(net.stages[1].layer, [0], [0], [1.0])
    ctx = evo.NetworkContext(net, (torch.zeros(2, 2), torch.zeros(2).long()))
    r = evo.GraphAnalyzer(top_k=1).analyze(ctx)
    assert (r["graph_nodes"], r["graph_edges"]) == (6, 4)
    assert r["mean_degree"] == pytest.approx(8 / 6)
    assert (r["max_in_degree"], r["max_out_degree"], r["isolated_neurons"]) == (2, 2, 1)
    assert (r["components"], r["largest_component_fraction"]) == (2, pytest.approx(5 / 6))
    assert r["reachable_outputs"] == 0.5 and r["mean_path_length"] == 2.0
    assert r["dead_end_neurons"] == 1 and r["average_clustering"] == 0.0
    assert r["max_betweenness"] == pytest.approx(2 / 20)  # 2 of the (n−1)(n−2) pairs
    assert r["central_neurons"] == [[1, 0]]
    r = evo.GraphAnalyzer(weight_threshold=0.1).analyze(ctx)
    assert r["graph_edges"] == 3 and r["max_betweenness"] == pytest.approx(1 / 20)
    # a residual block's inner neurons are nodes too, a triangle-free chain through them
    net.add_residual_block(0, hidden=1)
    blk = net.stages[0].blocks[0]
    with torch.no_grad():
        blk.second.values[:blk.second.nnz] = 1.0
    r = evo.GraphAnalyzer().analyze(ctx)
    assert r["graph_nodes"] == 7
    assert r["graph_edges"] == 4 + blk.first.nnz + blk.second.nnz
