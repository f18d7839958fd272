"""SnapshotManager: bit-exact round trips through delta chains (growth, pruning, cloning, weight
changes), delta files smaller than full ones, atomic writes, phases, ensemble inference."""

import os

import pytest
import torch

from morphonet.growth import MinimalNetwork, SnapshotManager


def _bits_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype.is_floating_point:
            x, y = x.view(torch.int32), y.view(torch.int32)
        if x.shape != y.shape or not torch.equal(x, y):
            return False
    return True


def _evolve(net, step):
    """A structural and numerical change, as training with growth makes."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for lay in net.conn.values():
            lay.values.add_(1e-3 * torch.randn(lay.values.shape, generator=g))
    if step % 2 == 0:
        src = torch.randint(0, 12, (15,), generator=g)
        dst = torch.randint(0, 4, (15,), generator=g)
        net.add_connections(0, 3, src, dst, torch.randn(15, generator=g))
    else:
        lay = net.layer(0, 1)
        lay.prune(torch.arange(0, lay.nnz, 3))
        net.clone_neuron(1, int(net.active(1).nonzero()[0]))


def test_round_trip_bit_exact_through_delta_chain(tmp_path):
    torch.manual_seed(0)
    net = MinimalNetwork([40, 30, 20, 4], sparsity=0.3, seed=0, neuron_capacity=0.5)
    sm = SnapshotManager(str(tmp_path), min_improvement=0.02)
    saved, x = [], torch.randn(16, 40)
    for step in range(6):
        phase = ["coarse", "coarse", "medium", "medium", "fine", "fine"][step]
        sid = sm.save(net, phase, step, "growth", val_acc=0.1 * step)
        saved.append((sid, net.structure_state(), net(x).detach()))
        _evolve(net, step)
    fresh = SnapshotManager(str(tmp_path))  # from disk only
    assert fresh.by_phase() == {"coarse": [0, 1], "medium": [2, 3], "fine": [4, 5]}
    for sid, state, out in saved:
        assert _bits_equal(fresh.load_state(sid), {k: v for k, v in state.items()})
        loaded = fresh.load(sid)
        assert torch.equal(loaded(x), out)  # same bits in, same bits out
    assert [e["base"] for e in fresh.index] == [None, 0, 1, 2, 3, 4]
    full, deltas = fresh.index[0]["bytes"], [e["bytes"] for e in fresh.index[1:]]
    assert max(deltas) < full  # deltas store the changes only
    assert not [f for _, _, fs in os.walk(tmp_path) for f in fs if f.startswith(".tmp_")]
    assert fresh.improved(0.53) and not fresh.improved(0.51)  # best 0.5, > 2 points


def test_ensemble_is_mean_of_snapshot_probabilities(tmp_path):
    torch.manual_seed(1)
    net = MinimalNetwork([6, 8, 3], sparsity=0.5, seed=1)
    sm = SnapshotManager(str(tmp_path))
    nets = []
    for k in range(3):
        sm.save(net, "coarse", k, "val", val_acc=None)
        nets.append(sm.load(k))
        with torch.no_grad():
            for lay in net.conn.values():
                lay.values.add_(0.3 * torch.randn(lay.values.shape))
    x = torch.randn(20, 6)
    want = torch.stack([torch.softmax(n(x), 1) for n in nets]).mean(0)
    torch.testing.assert_close(sm.ensemble_predict([0, 1, 2], x), want, rtol=0, atol=1e-7)
    y = want.argmax(1)
    assert sm.ensemble_accuracy([0, 1, 2], x, y) == 1.0
    with pytest.raises(ValueError, match="sid"):
        sm.load_state(7)
    with pytest.raises(ValueError, match="ids"):
        sm.ensemble_predict([], x)


def test_growth_snapshot_keeps_the_scoring_batch(tmp_path):
    # the snapshot saved right before a growth event evaluates on validation: that forward
    # must not wipe the activations / ∂L/∂z the router ranks and signs its new edges with
    from morphonet.growth import create_multi_scale_network

    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 3
    model = create_multi_scale_network(5, [6, 4], 3, sparsity=0.3, seed=0,
                                       snapshot_dir=str(tmp_path), val_data=(x, y))
    model._score_batch(x, y, torch.nn.CrossEntropyLoss())
    net = model.network
    grads = {j: g.clone() for j, g in net.pre_grads.items()}
    acts = [a.clone() for a in net.activations]
    assert set(grads) == {1, 2, 3}
    assert model._snapshot(0, reason="growth") is not None
    assert set(net.pre_grads) == set(grads)
    for j, g in grads.items():
        assert torch.equal(net.pre_grads[j], g)
    assert all(torch.equal(a, b) for a, b in zip(net.activations, acts))
    assert not net.track and not net.record_grads


def _saved(tmp_path, n=3):
    net = MinimalNetwork([12, 8, 6, 4], sparsity=0.2, seed=0)
    mgr = SnapshotManager(str(tmp_path))
    for step in range(n):
        mgr.save(net, "coarse", step, "growth")
        _evolve(net, step)
    return mgr


def test_damaged_snapshot_files_raise_naming_the_file(tmp_path):
    from morphonet.files import CorruptFileError

    mgr = _saved(tmp_path)
    snap = tmp_path / mgr.index[1]["path"]
    raw = bytearray(snap.read_bytes())
    raw[-5] ^= 0x01  # one flipped bit (it was a raw zlib.error from deep inside loading)
    snap.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"snap_0001\.bin: damaged"):
        SnapshotManager(str(tmp_path)).load_state(1)
    # a valid snapshot file under another snapshot's name (a swapped or copied file)
    other = tmp_path / mgr.index[0]["path"]
    snap.write_bytes(other.read_bytes())
    with pytest.raises(CorruptFileError, match=r"snap_0001\.bin: not snapshot 1"):
        SnapshotManager(str(tmp_path)).load_state(1)
    # a truncated index (it was a JSONDecodeError)
    index = tmp_path / "index.json"
    index.write_text(index.read_text()[:-40])
    with pytest.raises(CorruptFileError, match=r"index\.json: not valid JSON"):
        SnapshotManager(str(tmp_path))
    index.write_text('[{"id": 0, "phase": "coarse"}]')
    with pytest.raises(CorruptFileError, match=r"index\.json: entry 0 lacks \['epoch'"):
        SnapshotManager(str(tmp_path))
    (tmp_path / "config.json").write_text('{"layer_sizes": [12, 8, 6, 4], "sparsty": 0.1}')
    with pytest.raises(CorruptFileError, match=r"config\.json: not a network configuration"):
        mgr.config()
