"""Channel surgery on traced models: remove channels exactly, copy them exactly, resize.

- `dead_channels`: the channels whose output is the same constant for every input (a zeroed
  batch-norm γ leaves β; zeroed filter rows leave the bias; a closed gate leaves 0). They carry
  no signal, so removing them changes nothing once their constant is folded into the next
  layer's bias.
- `shrink` / `rebuild` / `export_structure`: a physically smaller copy of the model keeping
  the given channels of each group (or every channel that is not dead), every producer, batch
  norm, depthwise convolution and consumer sliced together, the removed channels' constants
  folded into the consumers' biases. A constant that a zero-padded convolution reads cannot be
  folded exactly (the padding sees zeros at the borders): such a channel is kept, and the
  result says so.
- `widen`: Net2Net function-preserving widening (a new channel copies an existing one, the
  consumers' weights of the copied channel are shared among its copies).
- `resize`: every free group × a factor (weights kept where the sizes overlap, new channels
  initialised as the layer initialises).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..checks import check_int, check_real
from .graph import ChannelGraph, trace

__all__ = ["Structure", "dead_channels", "export_structure", "rebuild", "resize", "shrink",
           "widen"]

Structure = dict  # {"groups": [{"id", "size", "alive": [channels], ...}], ...} (JSON-safe)


def _args(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _probes(example_inputs: Any) -> list[tuple]:
    """The example and random inputs of the same shapes at three scales (integer inputs, e.g.
    token ids: the example and random ids below its largest)."""
    args = _args(example_inputs)
    g = torch.Generator().manual_seed(1234)
    out = [args]
    for scale in (1.0, 4.0, 0.25):
        probe = []
        for a in args:
            if not isinstance(a, Tensor):
                probe.append(a)
            elif a.is_floating_point():
                probe.append((scale * torch.randn(a.shape, generator=g)).to(a))
            else:
                hi = int(a.max()) + 1 if a.numel() else 1
                probe.append(torch.randint(0, max(hi, 1), a.shape, generator=g).to(a))
        out.append(tuple(probe))
    return out


def _consumer_inputs(graph: ChannelGraph) -> dict[str, list[tuple[int, int, int, int]]]:
    """Per consumer module: (offset, group, rep, size) of every input segment, in order."""
    out: dict[str, list] = {}
    for g in graph.groups.values():
        for name, off, rep in g.consumers:
            out.setdefault(name, []).append((off, g.id, rep, g.size))
    return {k: sorted(v) for k, v in out.items()}


def _check_no_gates(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if any(getattr(h, "is_morph_gate", False) for h in m._forward_pre_hooks.values()):
            raise ValueError(f"module '{name}' still has channel gates of a NetworkRegularizer: "
                             f"call regularizer.prune() (or .remove_gates()) before the surgery")


@torch.no_grad()
def _input_constants(model: nn.Module, graph: ChannelGraph,
                     example_inputs: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """Per consumer module, per input feature (channel for a conv): (constant, unread, value):
    whether the input is one constant over the probes (in eval mode; the training mode is
    restored), whether the layer does not read it (its weights there are all zero), and its
    value on the first probe."""
    _check_no_gates(model)
    modules = dict(model.named_modules())
    names = list(_consumer_inputs(graph))
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:
        def pre(mod, inp, n=n):
            x = inp[0].detach()
            if isinstance(mod, nn.Linear):
                seen[n].append(x.reshape(-1, x.shape[-1]).float())
            else:  # (N, C, *spatial) → (N·spatial, C)
                seen[n].append(x.transpose(0, 1).reshape(x.shape[1], -1).t().float())
        hooks.append(modules[n].register_forward_pre_hook(pre))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for args in _probes(example_inputs):
            model(*args)
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes.items():
            m.training = t
    out = {}
    for n, xs in seen.items():
        x = torch.cat(xs)  # (rows, features)
        lo, hi = x.min(0).values, x.max(0).values
        const = (hi - lo) <= 1e-6 * (1.0 + hi.abs().maximum(lo.abs()))
        out[n] = (const.cpu(), ~_columns_read(modules[n]), x[0])
    return out


def _columns_read(m: nn.Module) -> Tensor:
    """bool per input feature (channel) of a conv / linear layer: any weight reads it."""
    w = m.weight.detach()
    return (w.transpose(0, 1).reshape(w.shape[1], -1) != 0).any(1).cpu()


def dead_channels(model: nn.Module, example_inputs: Any,
                  graph: Optional[ChannelGraph] = None) -> dict[int, Tensor]:
    """Per free group: bool (size,), True where the channel carries no signal, for every
    input, by the model's parameters: no layer reads it (its weights there are zero in every
    layer reading the group), or every layer producing it has a zero filter for it (so it is
    a constant: their biases through batch norms and activations), and it is indeed one
    constant wherever it is read on the probes (the example and random inputs of its shape).
    `NetworkRegularizer.prune` makes the channels it finds not alive dead in this sense. A
    channel that is constant only by chance (e.g. a ReLU never active on the probes) is not
    dead."""
    graph = graph or trace(model, example_inputs)
    return _dead(model, graph, _input_constants(model, graph, example_inputs))


def _dead(model: nn.Module, graph: ChannelGraph, consts) -> dict[int, Tensor]:
    modules = dict(model.named_modules())
    out = {}
    for g in graph.free_groups():
        unread = torch.ones(g.size, dtype=torch.bool)
        const = torch.ones(g.size, dtype=torch.bool)
        for name, off, rep in g.consumers:
            c, u, _ = consts[name]
            unread &= u[off: off + g.size * rep].reshape(g.size, rep).all(1)
            const &= c[off: off + g.size * rep].reshape(g.size, rep).all(1)
        zero_rows = torch.ones(g.size, dtype=torch.bool)
        for name in g.producers:
            w = modules[name].weight.detach()
            zero_rows &= (w.reshape(w.shape[0], -1) == 0).all(1).cpu()
        dead = unread | (zero_rows & const)
        if not g.consumers:
            dead[:] = False
        out[g.id] = dead
    return out


def _foldable(model: nn.Module, graph: ChannelGraph, consts, gid: int,
              channel: int) -> bool:
    """Whether removing this (constant) channel can be made exact at every consumer."""
    modules = dict(model.named_modules())
    g = graph.groups[gid]
    for name, off, rep in g.consumers:
        m = modules[name]
        value = consts[name][2][off + channel * rep: off + (channel + 1) * rep]
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode == "zeros" and \
                any(p != 0 for p in _pads(m)) and bool((value.abs() > 0).any()) and \
                bool(_columns_read(m)[off + channel]):
            return False  # the padding reads zeros where the channel is the constant
    return True


def _pads(m: nn.Module) -> tuple[int, ...]:
    p = m.padding
    if isinstance(p, str):
        return (0,) if p == "valid" else (1,)
    return tuple(p)


def _check_keep(graph: ChannelGraph, keep: dict[int, Sequence[int]]) -> dict[int, Tensor]:
    out = {}
    for gid, idx in keep.items():
        if gid not in graph.groups:
            raise ValueError(f"keep names group {gid}, which the model does not have "
                             f"(groups: {sorted(graph.groups)})")
        g = graph.groups[gid]
        t = torch.as_tensor(list(idx), dtype=torch.long).unique(sorted=True)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= g.size):
            raise ValueError(f"keep[{gid}] has channels outside [0, {g.size})")
        if g.frozen is not None and t.numel() != g.size:
            raise ValueError(f"group {gid} cannot change its width: {g.frozen}")
        if t.numel() == 0:
            raise ValueError(f"keep[{gid}] keeps no channel: a layer needs at least one")
        out[gid] = t
    return out


def shrink(model: nn.Module, example_inputs: Any,
           keep: Optional[dict[int, Sequence[int]]] = None,
           graph: Optional[ChannelGraph] = None, report: Optional[dict] = None) -> nn.Module:
    """A physically smaller copy of ``model`` that computes the same function.

    ``keep``: the channels to keep per group id (`graph.trace` ids; groups not named keep
    every channel). Default: every channel that is not dead (`dead_channels`). A removed
    channel must be dead (a constant): its constant is folded into the biases of the layers
    that read it, exactly; one read by a zero-padded convolution with a non-zero constant is
    kept instead (``report["kept_unfoldable"]`` lists them; ``report["removed"]`` counts the
    removed channels per group). The copy is the user's class with its layers replaced."""
    graph = graph or trace(model, example_inputs)
    consts = _input_constants(model, graph, example_inputs)
    dead = _dead(model, graph, consts)
    if keep is None:
        keep = {gid: (~d).nonzero().flatten().tolist() or [0] for gid, d in dead.items()}
    keep = _check_keep(graph, keep)
    kept_unfoldable: dict[int, list[int]] = {}
    for gid, k in list(keep.items()):
        g = graph.groups[gid]
        removed = sorted(set(range(g.size)) - set(k.tolist()))
        if not removed:
            continue
        bad = [c for c in removed if not bool(dead[gid][c])]
        if bad:
            raise ValueError(f"channels {bad[:8]} of group {gid} carry signal (see "
                             f"dead_channels): removing them would change the function; make "
                             f"them dead first (NetworkRegularizer.prune)")
        back = [c for c in removed if not _foldable(model, graph, consts, gid, c)]
        if back:
            kept_unfoldable[gid] = back
            keep[gid] = torch.tensor(sorted(set(k.tolist()) | set(back)))
    if report is not None:
        report["kept_unfoldable"] = kept_unfoldable
        report["removed"] = {gid: graph.groups[gid].size - int(k.numel())
                             for gid, k in keep.items()}
    return _rebuild_modules(model, graph, keep, consts)


def _indices(entries, keep: dict[int, Tensor]) -> Tensor:
    """Kept input features of a module from its (offset, group, rep, size) entries."""
    parts = []
    for off, gid, rep, size in entries:
        k = keep.get(gid, torch.arange(size))
        parts.append((off + k[:, None] * rep + torch.arange(rep)[None, :]).reshape(-1))
    return torch.cat(parts)


@torch.no_grad()
def _rebuild_modules(model: nn.Module, graph: ChannelGraph, keep: dict[int, Tensor],
                     consts) -> nn.Module:
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    ins, outs, norms, pass_, touched = _roles(graph, keep)
    for name in touched:
        m = modules[name]
        if name in pass_:
            new = _slice_depthwise(m, _indices(sorted(pass_[name]), keep))
        elif name in norms:
            new = _slice_norm(m, _indices(sorted(norms[name]), keep))
        else:
            in_idx = _indices(ins[name], keep) if name in ins else None
            out_idx = outs.get(name)
            value = consts[name][2] if name in consts else None
            new = _slice_layer(m, in_idx, out_idx, value)
        _set_module(out, name, new)
    return out


def _roles(graph: ChannelGraph, changed: dict[int, Tensor]):
    """For a change of the groups in ``changed`` (group id → new channel index): per module,
    its input segments (consumers), its new output channels (producers), its segments as a
    batch norm or a depthwise convolution, and the set of modules the change touches."""
    ins = _consumer_inputs(graph)
    outs = {name: changed[gid] for gid in changed for name in graph.groups[gid].producers}
    norms: dict[str, list] = {}
    pass_: dict[str, list] = {}
    for g in graph.groups.values():
        for name, off in g.norms:
            norms.setdefault(name, []).append((off, g.id, 1, g.size))
        for name, off in g.passthrough:
            pass_.setdefault(name, []).append((off, g.id, 1, g.size))
    touched = set(outs) | {n for role in (ins, norms, pass_) for n, entries in role.items()
                           if any(e[1] in changed for e in entries)}
    return ins, outs, norms, pass_, touched


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _slice_layer(m: nn.Module, in_idx: Optional[Tensor], out_idx: Optional[Tensor],
                 in_value: Optional[Tensor]) -> nn.Module:
    """A conv / linear layer keeping input features ``in_idx`` and outputs ``out_idx``; the
    removed inputs' constant values ``in_value`` folded into the bias."""
    w = m.weight.detach()
    n_in = w.shape[1] if in_idx is None else int(in_idx.numel())
    rows = torch.arange(w.shape[0]) if out_idx is None else out_idx
    fold = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if in_idx is not None and in_value is not None:
        removed = torch.ones(w.shape[1], dtype=torch.bool)
        removed[in_idx] = False
        if bool(removed.any()):
            c = in_value.to(w.dtype).to(w.device)[removed.to(w.device)]  # (R,)
            wr = w[:, removed.to(w.device)]
            fold = (wr.reshape(wr.shape[0], wr.shape[1], -1).sum(-1) * c).sum(1)
    has_bias = m.bias is not None or bool((fold != 0).any())
    if isinstance(m, nn.Linear):
        new = nn.Linear(n_in, int(rows.numel()), bias=has_bias, device=w.device, dtype=w.dtype)
    else:
        new = type(m)(n_in, int(rows.numel()), m.kernel_size, m.stride, m.padding, m.dilation,
                      1, has_bias, m.padding_mode, device=w.device, dtype=w.dtype)
    wk = w[rows.to(w.device)]
    new.weight.copy_(wk if in_idx is None else wk[:, in_idx.to(w.device)])
    if has_bias:
        b = m.bias.detach() if m.bias is not None else torch.zeros_like(fold)
        new.bias.copy_((b + fold)[rows.to(w.device)])
    return new.train(m.training)


def _slice_norm(m: nn.Module, idx: Tensor) -> nn.Module:
    new = type(m)(int(idx.numel()), eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats)
    new = new.to(device=_dev(m))
    with torch.no_grad():
        for n in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, n, None)
            if t is not None:
                getattr(new, n).copy_(t[idx.to(t.device)])
        if m.track_running_stats:
            new.num_batches_tracked.copy_(m.num_batches_tracked)
    return new.train(m.training)


def _slice_depthwise(m: nn.Module, idx: Tensor) -> nn.Module:
    n = int(idx.numel())
    new = type(m)(n, n, m.kernel_size, m.stride, m.padding, m.dilation, n, m.bias is not None,
                  m.padding_mode, device=_dev(m), dtype=m.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(m.weight[idx.to(m.weight.device)])
        if m.bias is not None:
            new.bias.copy_(m.bias[idx.to(m.bias.device)])
    return new.train(m.training)


def _dev(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    p = p if p is not None else next(m.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------- structures


def export_structure(model: nn.Module, example_inputs: Any,
                     keep: Optional[dict[int, Sequence[int]]] = None,
                     graph: Optional[ChannelGraph] = None) -> Structure:
    """The learned structure as plain JSON: per group its id, full size, the channels kept
    (default: the channels that are not dead), the alive width, its producers and why it is
    frozen (if it is)."""
    graph = graph or trace(model, example_inputs)
    if keep is None:
        dead = dead_channels(model, example_inputs, graph)
        keep = {gid: (~d).nonzero().flatten().tolist() or [0] for gid, d in dead.items()}
    keep = {gid: [int(i) for i in k] for gid, k in keep.items()}
    groups = []
    for g in graph.groups.values():
        k = keep.get(g.id, list(range(g.size)))
        groups.append({"id": g.id, "size": g.size, "alive": k, "width": len(k),
                       "producers": list(g.producers), "frozen": g.frozen})
    widths = {g["id"]: g["width"] for g in groups}
    return {"format": "morpho.morph.structure/1", "groups": groups,
            "flops": graph.flops(widths), "full_flops": graph.flops()}


def rebuild(model: nn.Module, structure: Structure, example_inputs: Any) -> nn.Module:
    """The smaller model a `export_structure` JSON describes, built from ``model`` (its kept
    channels' weights; the channels it removes must be dead, as `shrink` requires)."""
    if not isinstance(structure, dict) or "groups" not in structure:
        raise ValueError("structure must be the dict export_structure returns")
    graph = trace(model, example_inputs)
    sizes = {g["id"]: g["size"] for g in structure["groups"]}
    for gid, g in graph.groups.items():
        if sizes.get(gid) != g.size:
            raise ValueError(f"the structure was exported from another model: group {gid} has "
                             f"{sizes.get(gid)} channels there and {g.size} here")
    keep = {g["id"]: g["alive"] for g in structure["groups"] if g["frozen"] is None}
    return shrink(model, example_inputs, keep, graph)


# ---------------------------------------------------------------------------- widen / resize


def _groups_to_change(graph: ChannelGraph, groups: Optional[Sequence[int]],
                      layer: Optional[str]) -> list[int]:
    if layer is not None:
        found = [g.id for g in graph.free_groups() if layer in g.producers]
        if not found:
            frozen = [g for g in graph.groups.values() if layer in g.producers]
            why = frozen[0].frozen if frozen else "it produces no channel group"
            raise ValueError(f"layer '{layer}' cannot be widened: {why}")
        return found
    if groups is None:
        return [g.id for g in graph.free_groups()]
    for gid in groups:
        if gid not in graph.groups or graph.groups[gid].frozen is not None:
            why = graph.groups[gid].frozen if gid in graph.groups else "no such group"
            raise ValueError(f"group {gid} cannot change its width: {why}")
    return list(groups)


@torch.no_grad()
def widen(model: nn.Module, example_inputs: Any, factor: float = 1.4,
          layer: Optional[str] = None, groups: Optional[Sequence[int]] = None,
          seed: int = 0) -> nn.Module:
    """Net2Net widening that preserves the function: each chosen group (every free group, the
    output group of ``layer``, or ``groups``) grows to ``round(size · factor)`` channels; each
    new channel copies a random existing one (its filter, bias, batch-norm parameters and
    statistics), and every layer reading the group shares the copied channel's input weights
    equally among the copies. Outputs are unchanged (eval mode; in train mode batch statistics
    are unchanged too, the copies being identical)."""
    factor = check_real("factor", factor, 1)
    graph = trace(model, example_inputs)
    chosen = _groups_to_change(graph, groups, layer)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    mapping = {}
    for gid in chosen:
        n = graph.groups[gid].size
        extra = max(0, round(n * factor) - n)
        src = torch.randint(0, n, (extra,), generator=gen)
        mapping[gid] = torch.cat([torch.arange(n), src])  # new channel j copies mapping[j]
    return _remap(model, graph, mapping, share=True)


def resize(model: nn.Module, example_inputs: Any, width_factor: float = 1.4,
           widths: Optional[dict[int, int]] = None, seed: Optional[int] = None) -> nn.Module:
    """A copy of ``model`` with every free group × ``width_factor`` channels (at least one),
    or the given ``widths`` (group id → channels; groups not named keep their width). The
    weights are kept where the old and new sizes overlap (the first channels); new channels
    are initialised as their layer initialises (from torch's global generator, or seeded by
    ``seed``). A new model, not the same function: Morph.py's ``resize_layers``; use `widen`
    to keep the function."""
    graph = trace(model, example_inputs)
    if widths is None:
        width_factor = check_real("width_factor", width_factor, 0, lo_open=True)
        widths = {g.id: max(1, round(g.size * width_factor)) for g in graph.free_groups()}
    else:
        for gid, w in widths.items():
            check_int(f"widths[{gid}]", w, 1)
            if gid not in graph.groups:
                raise ValueError(f"widths names group {gid}, which the model does not have")
            if graph.groups[gid].frozen is not None and w != graph.groups[gid].size:
                raise ValueError(f"group {gid} cannot change its width: "
                                 f"{graph.groups[gid].frozen}")
    mapping = {gid: torch.arange(w) for gid, w in widths.items()
               if w != graph.groups[gid].size}
    if seed is not None:
        torch.manual_seed(check_int("seed", seed, 0))
    return _remap(model, graph, mapping, share=False)


def _expand_index(entries, mapping: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
    """(source feature per new feature (−1: fresh), how many new features copy each source)
    for a module's inputs."""
    src = []
    for off, gid, rep, size in entries:
        m = mapping.get(gid, torch.arange(size))
        fresh = m >= size
        s = (off + m.clamp(max=size - 1)[:, None] * rep + torch.arange(rep)[None, :])
        s[fresh] = -1
        src.append(s.reshape(-1))
    src = torch.cat(src)
    counts = torch.bincount(src[src >= 0], minlength=int(src.max()) + 1 if src.numel() else 0)
    return src, counts


@torch.no_grad()
def _remap(model: nn.Module, graph: ChannelGraph, mapping: dict[int, Tensor],
           share: bool) -> nn.Module:
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    ins, outs, norms, pass_, touched = _roles(graph, mapping)
    for name in touched:
        m = modules[name]
        if name in pass_ or name in norms:
            src, _ = _expand_index(sorted(pass_.get(name) or norms[name]), mapping)
            new = _remap_per_channel(m, src)
        else:
            in_src, counts = _expand_index(ins[name], mapping) if name in ins else (None, None)
            new = _remap_layer(m, in_src, counts if share else None, outs.get(name))
        _set_module(out, name, new)
    return out


def _fresh_like(m: nn.Module, n_in: int, n_out: int) -> nn.Module:
    w = m.weight
    if isinstance(m, nn.Linear):
        new = nn.Linear(n_in, n_out, bias=m.bias is not None, device=w.device, dtype=w.dtype)
    else:
        new = type(m)(n_in, n_out, m.kernel_size, m.stride, m.padding, m.dilation, 1,
                      m.bias is not None, m.padding_mode, device=w.device, dtype=w.dtype)
    return new.train(m.training)


def _remap_layer(m: nn.Module, in_src: Optional[Tensor], counts: Optional[Tensor],
                 out_map: Optional[Tensor]) -> nn.Module:
    w = m.weight.detach()
    n_out_old, n_in_old = w.shape[0], w.shape[1]
    out_map = torch.arange(n_out_old) if out_map is None else out_map
    in_src = torch.arange(n_in_old) if in_src is None else in_src
    new = _fresh_like(m, int(in_src.numel()), int(out_map.numel()))
    nw = new.weight.detach()
    rows_old = out_map < n_out_old
    cols_old = in_src >= 0
    ro, co = out_map[rows_old].to(w.device), in_src[cols_old].to(w.device)
    block = w[ro][:, co]
    if counts is not None:  # Net2Net: the copies of an input share its weight
        shape = (1, -1) + (1,) * (w.dim() - 2)
        block = block / counts[in_src[cols_old]].to(w).reshape(shape)
    nw[rows_old.nonzero().flatten().to(w.device)[:, None],
       cols_old.nonzero().flatten().to(w.device)[None, :]] = block
    if m.bias is not None:
        new.bias[rows_old.to(w.device)] = m.bias.detach()[ro]
    return new


def _remap_per_channel(m: nn.Module, src: Tensor) -> nn.Module:
    """A batch norm or a depthwise convolution over the remapped channels (copies of existing
    channels take their parameters; fresh ones are initialised)."""
    n = int(src.numel())
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        new = type(m)(n, n, m.kernel_size, m.stride, m.padding, m.dilation, n,
                      m.bias is not None, m.padding_mode, device=_dev(m), dtype=m.weight.dtype)
        names = ("weight", "bias")
    else:
        new = type(m)(n, eps=m.eps, momentum=m.momentum, affine=m.affine,
                      track_running_stats=m.track_running_stats).to(_dev(m))
        names = ("weight", "bias", "running_mean", "running_var")
    old = src >= 0
    with torch.no_grad():
        for name in names:
            t = getattr(m, name, None)
            if t is not None:
                getattr(new, name)[old.to(t.device)] = t[src[old].to(t.device)]
        if getattr(m, "num_batches_tracked", None) is not None:
            new.num_batches_tracked.copy_(m.num_batches_tracked)
    return new.train(m.training)

