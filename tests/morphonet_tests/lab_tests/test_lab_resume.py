"""A lab run killed with SIGKILL (the whole process group: the lab and its 2 worker processes,
as when a machine dies) and resumed gives the report of an uninterrupted run: finished trials
are not redone, none is lost, trials left running by the dead workers run again."""

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna

from morphonet.lab.cli import main
from morphonet.lab.engine import open_storage

FILE = """
[lab]
max_parallel_experiments = 2
verbose = false
n_resamples = 2000

[[hypothesis]]
name = "planted"
category = "synthetic"
seeds = 8
control = "a"
[hypothesis.params]
sleep = 0.1
[hypothesis.arms.a]
[hypothesis.arms.b]
effect = 0.03

[[hypothesis]]
name = "same"
category = "synthetic"
seeds = 7
[hypothesis.params]
sleep = 0.1
"""


def _trials(journal: str) -> list:
    if not os.path.exists(journal):
        return []
    storage = open_storage(journal)
    return [t for s in optuna.get_all_study_summaries(storage)
            for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]


def _report(d) -> str:
    return re.sub(r"--results-dir \S+", "--results-dir DIR", (d / "report.md").read_text())


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    f = tmp_path / "h.toml"
    f.write_text(FILE)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["lab", "run", str(f), "--results-dir", str(whole), "--workers", "1",
                 "--quiet"]) == 0
    journal = str(killed / "lab.journal")
    p = subprocess.Popen([sys.executable, "-m", "morphonet.cli", "lab", "run", str(f),
                          "--results-dir", str(killed), "--quiet"], start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if sum(t.state.name == "COMPLETE" for t in _trials(journal)) >= 6:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)  # the lab and both workers, mid-trial
    p.wait()
    before = {t.number: t for t in _trials(journal) if t.state.name == "COMPLETE"}
    states = Counter(t.state.name for t in _trials(journal))
    assert states["COMPLETE"] < 30 and states["RUNNING"] + states["WAITING"] > 0, states
    assert not (killed / "report.md").exists()
    assert main(["lab", "run", str(f), "--results-dir", str(killed), "--workers", "1",
                 "--quiet"]) == 0
    after = _trials(journal)
    done = [t for t in after if t.state.name == "COMPLETE"]
    keys = Counter((t.user_attrs["lab_config"]["hypothesis"], t.user_attrs["lab_arm"],
                    t.user_attrs["lab_seed"]) for t in done)
    assert len(keys) == 30 and set(keys.values()) == {1}  # none lost, none done twice
    for n, t in before.items():  # the trials finished before the kill were kept as they were
        kept = next(x for x in done if x.number == n)
        assert kept.value == t.value and kept.datetime_complete == t.datetime_complete
    # trials the dead workers left running were failed (marked stale) and run again
    stale = [t for t in after if t.user_attrs.get("lab_stale")]
    assert len(stale) == states["RUNNING"]
    assert _report(killed) == _report(whole)
