"""morphonet.timing: the one interleaved, paired latency helper."""

import time

import pytest
import torch
from torch import nn

from morphonet.timing import quantiles, time_models


def _sleeper(ms):
    def f(x):
        time.sleep(ms / 1e3)
        return x
    return f


def test_ratio_of_known_durations():
    # sleeping is wall-clock time, not CPU work, so the 3:1 ratio holds on a loaded machine
    res = time_models({"slow": _sleeper(6), "fast": _sleeper(2)}, torch.zeros(1),
                      reference="slow", rounds=5, warmup=1, min_sample_ms=0)
    assert 2.0 < res["fast"]["speedup"]["median"] < 3.3
    assert 2.0 < res["fast"]["fastest_ratio"] < 3.3
    assert res["slow"]["speedup"] == {"median": 1.0, "p20": 1.0, "p80": 1.0}
    assert 5.5 < res["slow"]["median_ms"] < 9.0
    s = res["fast"]
    assert s["p20_ms"] <= s["median_ms"] <= s["p80_ms"]
    assert len(s["samples_ms"]) == 5 and s["rounds"] == 5


def test_rounds_interleave_and_rotate():
    calls = []
    def recorder(name):
        return lambda x: calls.append(name)

    models = {n: recorder(n) for n in "abc"}
    time_models(models, torch.zeros(1), rounds=3, warmup=0, min_sample_ms=0)
    # no warmup beyond the first (calibrating) call per model, then rounds a b c / b c a / c a b
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")


def test_small_calls_are_repeated_per_sample():
    res = time_models({"m": lambda x: x + 1}, torch.zeros(4), rounds=2, min_sample_ms=1.0)
    assert res["m"]["number"] > 1


def test_eval_mode_inference_and_mode_restored():
    seen = {}

    class M(nn.Module):
        def forward(self, x):
            seen["training"] = self.training
            seen["inference"] = torch.is_inference_mode_enabled()
            return x

    m = M().train()
    time_models({"m": m}, torch.zeros(1), rounds=1, min_sample_ms=0)
    assert seen == {"training": False, "inference": True}
    assert m.training


def test_threads_given_back():
    before = torch.get_num_threads()
    time_models({"m": lambda x: x}, torch.zeros(1), rounds=1, threads=1)
    assert torch.get_num_threads() == before


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        time_models({}, torch.zeros(1))
    with pytest.raises(TypeError, match="mapping"):
        time_models([lambda x: x], torch.zeros(1))
    with pytest.raises(TypeError, match=r"models\['a'\]"):
        time_models({"a": 3}, torch.zeros(1))
    with pytest.raises(ValueError, match="reference"):
        time_models({"a": lambda x: x}, torch.zeros(1), reference="b")
    with pytest.raises(ValueError, match="rounds"):
        time_models({"a": lambda x: x}, torch.zeros(1), rounds=0)


def test_quantiles():
    q = quantiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert q["median"] == 6 and q["p20"] == 3 and q["p80"] == 9
    assert quantiles([4.0]) == {"median": 4.0, "p20": 4.0, "p80": 4.0}
    with pytest.raises(ValueError, match="values"):
        quantiles([])


@pytest.mark.gpu
def test_cuda_models_are_synchronised():
    big, small = nn.Linear(2048, 2048).cuda(), nn.Linear(2048, 256).cuda()
    x = torch.randn(4096, 2048, device="cuda")
    res = time_models({"big": big, "small": small}, x, reference="big", rounds=5,
                      threads=None)
    assert res["small"]["speedup"]["median"] > 2.0  # 8× fewer FLOPs, seen only when synced
