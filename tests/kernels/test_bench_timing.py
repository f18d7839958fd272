"""The benches' one timing skeleton (bench/_common.py): steady-state timing is `time_ms` over
windows of several queued calls, per call; bench_masked_linear and bench_ext use it rather
than timing loops of their own."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402


def test_steady_ms_is_time_ms_per_call_of_a_window(monkeypatch):
    calls = []
    windows = []

    def fake_time_ms(fn, device, **kwargs):
        before = len(calls)
        fn()
        windows.append(len(calls) - before)
        return 40.0, 20.0, 60.0

    monkeypatch.setattr(_common, "time_ms", fake_time_ms)
    med, p20, p80 = _common.steady_ms(lambda: calls.append(1), "cpu", calls=20)
    assert windows == [20] and (med, p20, p80) == (2.0, 1.0, 3.0)


def test_masked_linear_bench_times_steady_state_with_the_skeleton():
    import bench_masked_linear as bml

    assert not hasattr(bml, "steady_ms") or bml.steady_ms is _common.steady_ms
    med, _, _ = bml._steady(lambda: None, "cpu")
    assert med >= 0.0


def test_ext_bench_steady_timing_is_the_skeletons(monkeypatch):
    import bench_ext

    calls = []
    monkeypatch.setattr(_common, "time_ms", lambda fn, device, **kw: (fn(), (8.0, 4.0, 12.0))[1])

    class Rec:
        def add(self, **fields):
            return fields

    r = bench_ext._add(Rec(), "cpu", "extrema_stats", "copy", "fwd", "float32", {},
                       lambda: calls.append(1), nbytes=4e6, calls=4, timing="steady")
    assert len(calls) >= 4 and r["median_ms"] == 2.0 and r["gbps"] == 4e6 / 2.0 / 1e6


def test_block_sparse_bench_records_the_regrow_backend(tmp_path):
    """The regrow records say which regrow ran (Triton kernels or the ATen fallback): the
    block_sparse dispatcher's `backend` says nothing about it."""
    import json

    import bench_block_sparse

    out = tmp_path / "bs.jsonl"
    bench_block_sparse.main(["--quick", "--device", "cpu", "--out", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    regrows = [r for r in recs if "regrow" in r["mode"]]
    assert regrows and all(r["regrow_backend"] == "reference" for r in regrows), regrows
