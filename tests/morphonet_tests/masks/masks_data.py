"""Shared data of the MorphoNet Pro tests: the seed file, its documented defaults, small
blobs."""

from pathlib import Path

from morphonet import make_blobs

SEED_FILE = next((Path(__file__).resolve().parents[3].parent / "shared" / "seeds").glob(
    "000_*.txt"), None)

SEED_DEFAULTS = dict(hidden_dims=[128, 64], network_type="mlp", sparse_init=0.4,
                     target_sparsity=0.7, sparsity_loss=0.002, sparsity_schedule="cosine",
                     weight_lr=0.001, mask_lr=0.02, weight_decay=0.01, epochs=100,
                     batch_size=64, warmup_epochs=10, use_skip_connections=True,
                     use_batchnorm=False, dropout=0.0, device="auto")


def blobs(n=300, seed=0):
    """5 Gaussian blobs in 20-d (spread 2: separable enough to learn in a few epochs)."""
    return make_blobs(n_samples=n, n_features=20, n_classes=5, spread=2.0, seed=seed)
