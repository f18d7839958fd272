"""`RigLRewiring`: the RigL (or SET) drop / regrow schedule of the first generation's peers
(`morphonet.growth.peers.SparsePeer`, reused: the same drop fraction, magnitude drop and
dense-gradient regrowth, optimizer moments moved with their edges) as a training hook for an
`EvolvableNetwork`, so an evolution pipeline can rewire its main-path layers while it trains
(add it to ``NetworkContext.hooks``). It is training, like an optimizer step: the growth
strategies stay exact at their moments of change; the rewiring changes the function as RigL
does. The layers are re-read at every update (growth replaces resized layers); residual
blocks and patches are left alone (their zero-valued W2 would be dropped first).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..checks import check_choice, check_fraction, check_instance, check_int
from ..growth.peers import SparsePeer
from .network import EvolvableNetwork

__all__ = ["RigLRewiring"]


class RigLRewiring(SparsePeer):
    """RigL / SET rewiring of an `EvolvableNetwork`'s stage layers (module docstring).

    Args:
        network: the network (its stages' layers are rewired).
        method: ``"rigl"`` (regrow by the dense gradient) or ``"set"`` (at random).
        update_every: optimizer steps between updates; end_step: the last step of updates.
        alpha: the initial (RigL, cosine-decayed) or constant (SET) drop fraction.
        seed: ties and random regrowth.
    """

    def __init__(self, network: EvolvableNetwork, method: str = "rigl",
                 update_every: int = 50, end_step: int = 10_000, alpha: float = 0.3,
                 seed: Optional[int] = None):
        # SparsePeer's constructor takes a MinimalNetwork; its schedule is reused as is
        self.net = check_instance("network", network, EvolvableNetwork)
        self.method = check_choice("method", method, ("rigl", "set"))
        self.update_every = check_int("update_every", update_every, 1)
        self.end_step = check_int("end_step", end_step, 1)
        self.alpha = check_fraction("alpha", alpha)
        self.step = self.moved = 0
        self.gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        self.layers = [st.layer for st in network.stages]

    def after_step(self, optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """Re-read the stage layers, then SparsePeer's step (drop and regrow on update
        steps); returns the connections moved."""
        self.layers = [st.layer for st in self.net.stages]
        return super().after_step(optimizer)

    def state_dict(self) -> dict:
        """The step count (what a resume needs) and the moves so far."""
        return {"step": self.step, "moved": self.moved, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`."""
        self.step, self.moved = state["step"], state["moved"]
        self.gen.set_state(state["gen"])
