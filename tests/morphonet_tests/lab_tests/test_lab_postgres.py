"""The multi-machine path: a lab study on a real PostgreSQL server (a throwaway one started
here with initdb + pg_ctl on a free port; as the ``postgres`` user when the tests run as
root, which PostgreSQL refuses), two worker processes sharing it, and a second lab (another
machine) pointed at the same study finding everything done."""

import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter

import pytest

from morphonet.lab import Hypothesis, LabConfig, NeuralArchitectureLab
from morphonet.lab.engine import open_storage

BIN = next((d for d in ("/usr/local/bin", "/usr/lib/postgresql/15/bin")
            if os.path.exists(os.path.join(d, "pg_ctl"))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    if BIN is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl, initdb) on this machine")
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    as_user: list[str] = []
    d = tempfile.mkdtemp(prefix="lab_pg_")
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(d, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(d, "data"), _free_port()
    try:
        subprocess.run(as_user + [f"{BIN}/initdb", "-D", data, "-U", "lab", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run(as_user + [f"{BIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "log"),
                                  "-o", f"-p {port} -k {d} -c listen_addresses=127.0.0.1 "
                                        "-c fsync=off",
                                  "-w", "start"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as e:
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {e}")
    yield f"postgresql://lab@127.0.0.1:{port}/postgres"
    subprocess.run(as_user + [f"{BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "10",
                              "stop"], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def test_two_workers_share_a_postgres_study(postgres_url, tmp_path):
    import optuna

    h = Hypothesis(name="pg", category="synthetic", seeds=8, arms={"a": {}, "b": {"effect": 0.05}},
                   control="a", params={"sleep": 0.5})  # one worker alone needs 8 s: the
    # second (a fresh interpreter, ~3 s of CPU to start) always arrives in time to take some
    cfg = LabConfig(results_dir=str(tmp_path / "m1"), storage=postgres_url,
                    max_parallel_experiments=2, verbose=False, n_resamples=2000)
    lab = NeuralArchitectureLab(cfg)
    lab.register_hypothesis(h)
    r = lab.run_hypothesis_test("pg")
    assert r["comparisons"][0]["verdict"] == "better"
    storage = open_storage(postgres_url)
    study = optuna.load_study(study_name=lab._plans["pg"].study, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 16
    workers = Counter(t.user_attrs["lab_worker"] for t in done)
    assert len(workers) == 2, workers  # both processes took experiments from the one study
    # another machine pointed at the same study: nothing left to run, the same result
    other = NeuralArchitectureLab(cfg.replace(results_dir=str(tmp_path / "m2"),
                                              max_parallel_experiments=1))
    other.register_hypothesis(h)
    assert other.run_hypothesis_test("pg") == r
    assert len(optuna.load_study(study_name=lab._plans["pg"].study,
                                 storage=storage).trials) == 16
