"""How enforce_sparsity chooses units of mixed sizes: `_closest_fill` (greedy down the ranking,
then a search over the distinct sizes when the greedy pass misses), and the plan for the final
target that keeps progressive pruning with coarse units able to reach it."""

import itertools

import pytest
import torch

from morphonet import MorphoConfig, MorphoNetMLP
from morphonet.masks.schedule import _closest_fill, enforce_sparsity


def _fill(sizes, need):
    z = torch.tensor(sizes, dtype=torch.float64)
    take = _closest_fill(z, need)
    return take.tolist(), float(z[take].sum())


def test_equal_sizes_take_the_closest_prefix():
    assert _fill([1] * 10, 3.4) == ([True] * 3 + [False] * 7, 3.0)
    assert _fill([1] * 10, 3.6) == ([True] * 4 + [False] * 6, 4.0)
    assert _fill([4] * 5, 9.9) == ([True] * 2 + [False] * 3, 8.0)
    assert _fill([4] * 5, 10.1) == ([True] * 3 + [False] * 2, 12.0)
    assert _fill([4, 4], 6) == ([True, True], 8.0)  # a tie: one more unit, as a prefix did
    assert _fill([2, 2, 2], 3) == ([True, True, False], 4.0)
    assert _fill([3] * 4, 0) == ([False] * 4, 0.0)
    assert _fill([3] * 4, 100) == ([True] * 4, 12.0)


def test_greedy_pass_takes_smaller_units_further_down_the_ranking():
    # a prefix gives 10 or 20; skipping the second 10 for the two 3s lands on 16 exactly
    assert _fill([10, 10, 3, 3], 16) == ([True, False, True, True], 16.0)
    # stopping short at 10 misses by 5, one more unit by 3: the closer one wins
    assert _fill([10, 8], 15) == ([True, True], 18.0)


def _best_total(sizes, need):
    """Brute force: the smallest |total - need| over every subset."""
    return min(abs(sum(c) - need) for r in range(len(sizes) + 1)
               for c in itertools.combinations(sizes, r))


def test_size_search_finds_the_closest_total_when_the_greedy_pass_cannot():
    # the audit's case: blocks of 640 (edge), 160 (head) and 1024, need 7750; ranked with
    # the small units first the greedy pass lands on 8224; 7 × 1024 + 640 = 7808 is closest
    sizes = [640, 640, 640, 160] + [1024] * 7
    take, total = _fill(sizes, 7750)
    assert total == 7808 and abs(total - 7750) == _best_total(sizes, 7750)
    assert take[0] and not any(take[1:4])  # within a size, the lowest-ranked unit goes first


@pytest.mark.parametrize("seed", range(20))
def test_fill_is_within_half_the_smallest_unit_or_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([6, 9, 15, 40])[torch.randint(0, 4, (9,), generator=g)].tolist()
    need = float(torch.randint(1, sum(sizes), (), generator=g))
    _, total = _fill(sizes, need)
    best = _best_total(sizes, need)
    assert abs(total - need) <= max(best, 0.5 * min(sizes)) + 1e-9


def _block_mlp(schedule):
    cfg = MorphoConfig(input_dim=20, hidden_dims=[128, 64], n_classes=5, sparse_init=0.5,
                       target_sparsity=0.7, epochs=20, mask_granularity="block", block_size=32,
                       sparsity_schedule=schedule, seed=0)
    torch.manual_seed(0)
    return cfg, MorphoNetMLP(cfg)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_progressive_steps_prune_from_a_plan_that_reaches_the_final_target(schedule,
                                                                          monkeypatch):
    """Blocks of 32 on 20 → 128 → 64 → 5: 4 edge blocks of 640, 8 of 1024, 2 head blocks of
    160. Pruning each step's target on its own takes the small units early and ends 4 points
    over; pruning from the plan for the final target lands within 2 points."""
    from morphonet.masks import schedule as sched
    from morphonet.masks.schedule import target_sparsity_at

    results = {}
    for final in (None, 0.7):
        # without the plan, the steps' choices here would cut the network in two: shown with
        # the connectivity rule off (it would replace them, test_connectivity.py)
        monkeypatch.setattr(sched, "_CONNECTIVITY_RULE", final is not None)
        cfg, model = _block_mlp(schedule)
        g = torch.Generator().manual_seed(1)
        for epoch in range(cfg.epochs):
            with torch.no_grad():  # the mask values drift as in training
                for layer in model.masked_layers():
                    layer.mask_logits.add_(0.5 * torch.randn(layer.mask_logits.shape,
                                                             generator=g))
            target = target_sparsity_at(cfg, epoch)
            enforce_sparsity(model, target, final=None if final is None else
                             max(final, target))
        results[final] = model.sparsity()
    assert bool(model.output_reach().all())
    assert abs(results[0.7] - 0.7) <= 0.02
    assert abs(results[None] - 0.7) > 0.02  # what the plan prevents


def test_enforce_rejects_a_final_below_the_target():
    _, model = _block_mlp("linear")
    with pytest.raises(ValueError, match="final"):
        enforce_sparsity(model, 0.5, final=0.4)


# ------------------------------------------------------------------ through the trainer

def _train_blocks(block_size, **kw):
    import warnings

    from morphonet import MorphoTrainer

    torch.manual_seed(0)
    x, y = torch.randn(401, 20), torch.randint(0, 5, (401,))
    cfg = MorphoConfig(input_dim=20, hidden_dims=[128, 64], n_classes=5, sparse_init=0.5,
                       target_sparsity=0.7, epochs=20, mask_granularity="block",
                       block_size=block_size, seed=0, **kw)
    model = MorphoNetMLP(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stats = MorphoTrainer(model, cfg).train(x[:301], y[:301], x[301:], y[301:],
                                                    verbose=False)
        except ValueError as e:
            stats = e
    return model, before, stats, [str(w.message) for w in caught]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_trainer_lands_block_masks_within_two_points(schedule):
    """The audit's case (blocks of 32 on 20 → 128 → 64 → 5, target 0.70) ended at 0.743."""
    _, _, stats, warned = _train_blocks(32, sparsity_schedule=schedule)
    assert abs(stats["final_sparsity"] - 0.7) <= 0.02 and stats["best_epoch"] is not None
    assert not warned


def test_trainer_rejects_an_unreachable_target_before_training():
    """Blocks of 64: every layer keeps a block, so at most 48.6% can go."""
    model, before, err, _ = _train_blocks(64)
    assert isinstance(err, ValueError) and "cannot be reached" in str(err)
    assert "48.6%" in str(err) and "block_size" in str(err)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_trainer_warns_when_it_lands_outside_two_points():
    """Per-layer shares of coarse blocks cannot all round well: said, not silent."""
    _, _, stats, warned = _train_blocks(32, sparsity_distribution="uniform")
    assert abs(stats["final_sparsity"] - 0.7) > 0.02
    assert any("points from target_sparsity" in w and "or sparsity_distribution='global'" in w
               for w in warned)
    _, _, stats, warned = _train_blocks(32, sparsity_distribution="erk")
    assert abs(stats["final_sparsity"] - 0.7) <= 0.02 and not warned


def test_trainer_warns_when_no_epoch_is_eligible_for_selection(monkeypatch):
    """With the enforcement switched off the target is never reached: the model keeps the
    last epoch, best_val_acc is None, and both warnings say so."""
    import morphonet.masks.hooks

    monkeypatch.setattr(morphonet.masks.hooks, "enforce_sparsity", lambda *a, **k: 0)
    _, _, stats, warned = _train_blocks(32)
    assert stats["best_epoch"] is None and stats["best_val_acc"] is None
    assert any("no epoch reached the target sparsity" in w for w in warned)
    assert any("points from target_sparsity" in w and "or sparsity_distribution" not in w
               for w in warned)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_trainer_last_batch_of_one_row(batchnorm):
    """With batchnorm a last batch of one row joins the one before (a batch of one cannot be
    normalised); without, batches stay as they were (3 steps an epoch here)."""
    from morphonet import MorphoTrainer

    cfg = MorphoConfig(input_dim=6, hidden_dims=[8], n_classes=2, use_batchnorm=batchnorm,
                       batch_size=10, epochs=2, seed=0)
    trainer = MorphoTrainer(MorphoNetMLP(cfg), cfg)
    steps = []
    trainer.weight_opt.register_step_post_hook(lambda *a: steps.append(1))
    stats = trainer.train(torch.randn(21, 6), torch.randint(0, 2, (21,)), verbose=False)
    assert len(stats["loss_history"]) == 2
    assert len(steps) == (4 if batchnorm else 6)
