"""Pilot of `morpho morph`'s MorphNet strength (seed 0, validation only): the FLOPs the search
run learns and its validation accuracy for a few strength scales, per task and regulariser.
Run: OMP_NUM_THREADS=1 .venv/bin/python results/morph/pilot.py  (writes pilot.log here)."""
import json
import os
import sys

import torch

from morphonet.morph.experiment import MorphExperimentConfig, _Runner

torch.set_num_threads(1)
out = os.path.join(os.path.dirname(__file__), "pilot.log")
for task in ("mnist1d", "digits"):
    for scale in [float(s) for s in sys.argv[1:]] or (1.0, 4.0, 16.0):
        cfg = MorphExperimentConfig(strength_scale=scale)
        r = _Runner(cfg, print)
        model, init, data = r.base(task, 0)
        from morphonet.morph import trace
        f0 = trace(model, data.example).flops()
        for method in ("gamma", "group_lasso", "gates"):
            res = r.search(method, task, 0, init, data, [0.5])
            line = {"task": task, "scale": scale, "method": method,
                    "learned_flops": round(res["learned_flops"] / f0, 3),
                    "val_acc_after_prune": round(100 * res["val_acc"], 1),
                    "learned": res["learned"]}
            print(json.dumps(line), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(line) + "\n")
