"""SnapshotManager: delta-compressed, phase-organised, atomically written snapshots of a growing
MinimalNetwork that load back bit-exactly, and ensemble inference over chosen snapshots.

On disk (``root``)::

    config.json                  the network's constructor arguments (to rebuild it)
    index.json                   one entry per snapshot: id, phase, epoch, reason, val_acc,
                                 path, base (previous id or null), bytes
    <phase>/snap_<id>.bin        zlib-compressed torch.save payload

The first snapshot is full. Every later one is a **delta against the previous snapshot**: per
edge list the removed edge keys, the added edge keys with their values, and for the kept edges
the bitwise XOR of the old and new weight bit patterns (exactly invertible, unlike a float
difference, and mostly zero high bits so it compresses well); biases likewise by XOR, active
masks in full. Loading id k replays the chain from the full snapshot: the result is
bit-identical to the network that was saved. Every file (snapshot and index) is written to a
temporary file in the same directory and moved into place with ``os.replace``, so a crash never
leaves a half-written snapshot under its final name; each snapshot file carries its length and
SHA-256 (`morphonet.files.write_checked`), and the index records the SHA-256 too, so a
truncated, damaged or swapped file, or a damaged index, raises `morphonet.files.CorruptFileError`
naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from ..checks import check_instance, check_int, check_real
from ..files import CorruptFileError, read_checked, read_json, write_checked, write_json
from .network import MinimalNetwork, NetworkConfig

_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}


def _xor(a: Tensor, b: Tensor) -> Tensor:
    it = _INT_OF[a.dtype]
    return torch.bitwise_xor(a.contiguous().view(it), b.contiguous().view(it))


def _unxor(a: Tensor, x: Tensor) -> Tensor:
    return torch.bitwise_xor(a.contiguous().view(x.dtype), x).view(a.dtype)


def make_delta(prev: dict[str, Tensor], new: dict[str, Tensor]) -> dict:
    """Delta of two MinimalNetwork.structure_state dicts (see the module docstring)."""
    out: dict = {}
    for name, t in new.items():
        if name.endswith(".values"):
            continue
        if name.endswith(".key"):
            base = name[:-4]
            kp, kn = prev[name], t
            vp, vn = prev[base + ".values"], new[base + ".values"]
            keep_p, old_in_new = torch.isin(kp, kn), torch.isin(kn, kp)
            out[base + ".removed"] = kp[~keep_p]
            out[base + ".added_key"] = kn[~old_in_new]
            out[base + ".added_val"] = vn[~old_in_new]
            out[base + ".xor"] = _xor(vn[old_in_new], vp[keep_p])
        elif t.dtype.is_floating_point and name in prev and prev[name].shape == t.shape:
            out[name + ".xor"] = _xor(t, prev[name])
        else:
            out[name + ".full"] = t
    return out


def apply_delta(prev: dict[str, Tensor], delta: dict) -> dict[str, Tensor]:
    """Inverse of make_delta: the new state from the previous one."""
    out: dict[str, Tensor] = {}
    for name, t in delta.items():
        if name.endswith(".removed"):
            base = name[:-8]
            kp, vp = prev[base + ".key"], prev[base + ".values"]
            keep = ~torch.isin(kp, t)
            kept_v = _unxor(vp[keep], delta[base + ".xor"])
            keys = torch.cat([kp[keep], delta[base + ".added_key"]])
            vals = torch.cat([kept_v, delta[base + ".added_val"].to(vp.dtype)])
            order = torch.argsort(keys, stable=True)
            out[base + ".key"], out[base + ".values"] = keys[order], vals[order]
        elif name.endswith(".xor") and not any(name == k[:-8] + ".xor" for k in delta
                                               if k.endswith(".removed")):
            out[name[:-4]] = _unxor(prev[name[:-4]], t)
        elif name.endswith(".full"):
            out[name[:-5]] = t
    return out


class SnapshotManager:
    """Saves, reloads and ensembles snapshots under ``root`` (module docstring).

    Args:
        root: directory (created); an existing index there is continued.
        min_improvement: a validation snapshot is due when the validation accuracy exceeds the
            best accuracy of any snapshot so far by more than this (absolute, 0.02 = 2 points).
    """

    def __init__(self, root: str, min_improvement: float = 0.02):
        check_instance("root", root, (str, os.PathLike))
        self.root = os.fspath(root)
        self.min_improvement = check_real("min_improvement", min_improvement, 0)
        os.makedirs(self.root, exist_ok=True)
        ipath = os.path.join(self.root, "index.json")
        self.index: list[dict] = _read_index(ipath) if os.path.exists(ipath) else []
        self._cache: dict[int, dict[str, Tensor]] = {}
        self._last: Optional[dict[str, Tensor]] = (self.load_state(self.index[-1]["id"])
                                                   if self.index else None)

    @property
    def best_val(self) -> Optional[float]:
        """Best validation accuracy among the snapshots (None if none has one)."""
        accs = [e["val_acc"] for e in self.index if e["val_acc"] is not None]
        return max(accs) if accs else None

    def improved(self, val_acc: float) -> bool:
        """True when ``val_acc`` beats every snapshot's by more than min_improvement."""
        best = self.best_val
        return best is None or val_acc > best + self.min_improvement

    def save(self, net: MinimalNetwork, phase: str, epoch: int, reason: str,
             val_acc: Optional[float] = None) -> int:
        """Write a snapshot of ``net`` (delta against the previous one); returns its id."""
        check_instance("net", net, MinimalNetwork)
        if not isinstance(phase, str) or not phase.isidentifier():
            raise ValueError(f"phase must be a simple name, got {phase!r}")
        cpath = os.path.join(self.root, "config.json")
        if not os.path.exists(cpath):
            write_json(cpath, net.config.to_dict(), indent=None)
        state = net.structure_state()
        sid = len(self.index)
        payload = ({"full": state} if self._last is None else
                   {"delta": make_delta(self._last, state)})
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = zlib.compress(buf.getvalue(), 6)
        rel = os.path.join(phase, f"snap_{sid:04d}.bin")
        write_checked(os.path.join(self.root, rel), data, "snapshot")
        self.index.append({"id": sid, "phase": phase, "epoch": int(epoch), "reason": reason,
                           "val_acc": val_acc, "path": rel,
                           "base": None if self._last is None else sid - 1,
                           "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "full_bytes": sum(t.numel() * t.element_size()
                                             for t in state.values())})
        write_json(os.path.join(self.root, "index.json"), self.index)
        self._last = state
        self._cache[sid] = state
        return sid

    def rewind(self, count: int) -> None:
        """Keep only the first ``count`` snapshots (resuming a run from a checkpoint taken when
        there were ``count``: the snapshots its killed continuation wrote are forgotten, and
        their ids are written again, with the same content, as the run goes on)."""
        count = check_int("count", count, 0)
        if count > len(self.index):
            raise ValueError(f"count={count}: the index under {self.root} holds only "
                             f"{len(self.index)} snapshots (a checkpoint of another run?)")
        if count == len(self.index):
            return
        self.index = self.index[:count]
        write_json(os.path.join(self.root, "index.json"), self.index)
        self._cache.clear()
        self._last = self.load_state(self.index[-1]["id"]) if self.index else None

    def _read(self, sid: int) -> dict:
        e = self.index[sid]
        path = os.path.join(self.root, e["path"])
        data = read_checked(path, "snapshot")
        if e.get("sha256") not in (None, hashlib.sha256(data).hexdigest()):
            raise CorruptFileError(path, f"not snapshot {sid} of {self.root}/index.json (its "
                                         f"SHA-256 differs from the one the index recorded)")
        try:
            return torch.load(io.BytesIO(zlib.decompress(data)), weights_only=True)
        except Exception as e:  # checksum fine, payload unreadable: written by something else
            raise CorruptFileError(path, f"payload is not a readable snapshot ({e})") from e

    def load_state(self, sid: int) -> dict[str, Tensor]:
        """The exact structure_state of snapshot ``sid`` (replays the delta chain)."""
        check_int("sid", sid, 0, len(self.index) - 1)
        if sid in self._cache:
            return self._cache[sid]
        chain, k = [], sid
        while k not in self._cache and self.index[k]["base"] is not None:
            chain.append(k)
            k = self.index[k]["base"]
        if k not in self._cache:
            self._cache[k] = self._read(k)["full"]
        state = self._cache[k]
        for c in reversed(chain):
            state = apply_delta(state, self._read(c)["delta"])
            self._cache[c] = state
        return state

    def config(self) -> NetworkConfig:
        """The saved network configuration."""
        path = os.path.join(self.root, "config.json")
        try:
            return NetworkConfig.from_dict(read_json(path))
        except (TypeError, ValueError) as e:
            if isinstance(e, CorruptFileError):
                raise
            raise CorruptFileError(path, f"not a network configuration ({e})") from e

    def load(self, sid: int) -> MinimalNetwork:
        """A MinimalNetwork equal, bit for bit, to the one saved as ``sid``."""
        cfg = self.config()
        net = MinimalNetwork(cfg.layer_sizes, sparsity=0.0, activation=cfg.activation,
                             max_skip=cfg.max_skip, neuron_capacity=cfg.neuron_capacity,
                             min_edges_per_layer=0)
        net.load_structure_state(self.load_state(sid))
        net.eval()
        return net

    def by_phase(self) -> dict[str, list[int]]:
        """Snapshot ids grouped by phase."""
        out: dict[str, list[int]] = {}
        for e in self.index:
            out.setdefault(e["phase"], []).append(e["id"])
        return out

    @torch.no_grad()
    def ensemble_predict(self, ids: Sequence[int], x: Tensor) -> Tensor:
        """Mean of the snapshots' softmax probabilities, (batch, classes)."""
        if not ids:
            raise ValueError("ids must name at least one snapshot")
        probs = [torch.softmax(self.load(int(i))(x), dim=1) for i in ids]
        return torch.stack(probs).mean(0)

    def ensemble_accuracy(self, ids: Sequence[int], x: Tensor, y: Tensor) -> float:
        """Accuracy of ensemble_predict on (x, y)."""
        return float((self.ensemble_predict(ids, x).argmax(1) == y).float().mean())


_INDEX_KEYS = ("id", "phase", "epoch", "reason", "val_acc", "path", "base")


def _read_index(path: str) -> list[dict]:
    """index.json read back and checked: a list of entries with ids 0, 1, … in order, each
    with its keys and a base that is an earlier snapshot; `CorruptFileError` naming the file
    and the first thing wrong."""
    index = read_json(path)
    if not isinstance(index, list):
        raise CorruptFileError(path, f"not a snapshot index (a {type(index).__name__}, not a "
                                     f"list)")
    for i, e in enumerate(index):
        if not isinstance(e, dict) or any(k not in e for k in _INDEX_KEYS):
            missing = [k for k in _INDEX_KEYS if not isinstance(e, dict) or k not in e]
            raise CorruptFileError(path, f"entry {i} lacks {missing}")
        if e["id"] != i or not (e["base"] is None or (isinstance(e["base"], int)
                                                      and 0 <= e["base"] < i)):
            raise CorruptFileError(path, f"entry {i} has id {e['id']!r} and base "
                                         f"{e['base']!r} (ids must run 0, 1, ... and a base "
                                         f"must be an earlier snapshot)")
    return index
