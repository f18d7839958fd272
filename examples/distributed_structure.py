"""Data-parallel training with one structure on every rank (docs/distributed.md).

Launch on one machine with two CPU processes (gloo), or one process per GPU (NCCL)::

    torchrun --standalone --nproc_per_node=2 examples/distributed_structure.py
    torchrun --standalone --nproc_per_node=2 examples/distributed_structure.py --system grow

``--system masks`` (default): MorphoNet Pro's MorphoTrainer prunes to 70% sparsity; every
rank trains on its shard of the digits training split, gradients and pruning scores are
averaged over the ranks. ``--system grow``: a Structure Net grows from 1% connectivity; the
extrema windows and the router's gradients are merged over the ranks before every growth
event. Either way each rank prints a fingerprint of its model (structure and weights) and its
optimizer state: the fingerprints are the same on every rank. ``--checkpoint DIR`` writes one
checkpoint per rank each epoch and ``--resume`` continues from them.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch
import torch.distributed as dist


def fingerprint(tensors) -> str:
    """SHA-256 (first 16 hex digits) over the bytes of ``tensors`` in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def opt_tensors(*opts):
    return [v for o in opts for st in o.state_dict()["state"].values() for v in st.values()
            if isinstance(v, torch.Tensor)]


def run_masks(args, group) -> str:
    from morphonet.data import load_dataset
    from morphonet.masks import MorphoConfig, MorphoNetMLP, MorphoTrainer

    ds = load_dataset("digits", seed=0)  # the same splits on every rank
    cfg = MorphoConfig(input_dim=ds.n_features, n_classes=ds.n_classes, hidden_dims=[128, 64],
                       epochs=args.epochs, warmup_epochs=2, target_sparsity=0.7, seed=0,
                       device="cuda" if dist.get_backend() == "nccl" else "cpu")
    tr = MorphoTrainer(MorphoNetMLP(cfg), log=print if dist.get_rank() == 0 else lambda s: None)
    ckpt = (os.path.join(args.checkpoint, f"masks.rank{dist.get_rank()}.ckpt")
            if args.checkpoint else None)
    stats = tr.train(ds.train.x, ds.train.y, ds.val.x, ds.val.y, group=group,
                     verbose=dist.get_rank() == 0, checkpoint=ckpt, resume=args.resume)
    return (f"sparsity {stats['final_sparsity']:.3f} val {stats['best_val_acc']:.3f} "
            f"model {fingerprint(tr.model.state_dict().values())} "
            f"optimizers {fingerprint(opt_tensors(tr.weight_opt, tr.mask_opt))}")


def run_grow(args, group) -> str:
    from morphonet.data import load_dataset
    from morphonet.growth.experiment import growth_configs
    from morphonet.growth.trainer import create_multi_scale_network
    from morphonet.loop import rank_shard, shuffled_batches

    ds = load_dataset("digits", seed=0)
    sched, extrema, router = growth_configs(args.epochs)
    torch.manual_seed(0)
    model = create_multi_scale_network(ds.n_features, [32, 16], ds.n_classes, sparsity=0.01,
                                       scheduler=sched, extrema=extrema, router=router,
                                       val_data=(ds.val.x, ds.val.y), seed=0, group=group)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = rank_shard(ds.train.x, ds.train.y, group)  # this rank's rows
    gen = torch.Generator().manual_seed(0)
    for ep in range(args.epochs):
        # 16 rows a rank: the global batch of 32 that `morpho grow` uses
        r = model.train_epoch(shuffled_batches(x, y, 16, gen), opt,
                              torch.nn.CrossEntropyLoss(), ep)
        if dist.get_rank() == 0:
            print(f"epoch {ep + 1}: val {r['val_acc']:.3f} conn {r['connectivity']:.4f} "
                  f"growth {r['growth_events']}")
    return (f"{len(model.growth_log)} growth events, "
            f"model {fingerprint(model.network.state_dict().values())} "
            f"optimizer {fingerprint(opt_tensors(opt))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=["masks", "grow"], default="masks")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--checkpoint", default=None, help="folder for per-rank checkpoints (masks)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and args.system == "masks"  # growth runs on the CPU
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(1)
    try:
        group = dist.group.WORLD
        line = run_masks(args, group) if args.system == "masks" else run_grow(args, group)
        print(f"rank {dist.get_rank()}: {line}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
