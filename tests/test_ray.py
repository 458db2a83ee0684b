"""Distributed runs on Ray: the same rows as a serial run, a killed run resumes whole, bad addresses fail fast.

One local Ray instance (2 CPUs, no dashboard, a small object store) serves the module and is shut
down after it; the subprocess runs join it by its address, as a driver joins a real cluster.
"""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import threading
import time

import pytest

from interventions.errors import InterventionError
from interventions.harness.experiment import load_experiment
from interventions.harness.runner import run_experiment
from interventions.harness.units import WorkerMismatchError, WorkUnit, check_keys

from test_runner import kill_mid_run_and_resume, write_experiment

ray = pytest.importorskip("ray")

from interventions.harness.distributed import (  # noqa: E402  (after the skip: needs ray)
    LOCAL_OBJECT_STORE_BYTES, RayUnavailableError, RayUnreachableError, check_reachable)


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray instance that this test process is also connected to."""
    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                       object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING)
    yield context.address_info["gcs_address"]
    ray.shutdown()


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "interventions.cli", "run", *map(str, args)]


def _comparable(rows: list[dict]) -> dict[str, dict]:
    """Rows keyed by work key, without wall time (the one thing that differs between runs)."""
    out = {}
    for row in rows:
        row = dict(row, compute={k: v for k, v in row["compute"].items() if k != "wall_s"})
        out[row["key"]] = row
    return out


def _close(x, y) -> bool:
    """Equal, floats to a relative 1e-5, through nested dicts and lists."""
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-9) or (math.isnan(x) and math.isnan(y))
    return x == y


def _assert_same_rows(serial: list[dict], distributed: list[dict]) -> None:
    assert len({r["key"] for r in distributed}) == len(distributed)
    a, b = _comparable(serial), _comparable(distributed)
    assert a.keys() == b.keys()
    # diagnostics (e.g. a Mahalanobis distance near 6e7 on the random tiny model) are computed on clean
    # states that a worker batches with other prompts than the serial run does: equal to float rounding
    differing = [key for key in a if not _close(a[key], b[key])]
    assert not differing, (a[differing[0]], b[differing[0]])


def test_distributed_run_writes_the_serial_rows(cluster, tmp_path, tiny_dir):
    # batches of 3 over 2 workers: units of one (pair, task, protocol) land on both workers, each with its own caches
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, batch_size=3, tasks=[{"name": "countries", "n": 10}],
                            protocols=[{"kind": "silent"}, {"kind": "nl_message"},
                                       {"kind": "ac", "combine": ["sum", "replace"], "k": 1, "j": 2},
                                       {"kind": "ac", "combine": "replace", "k": 1, "j": 2, "control": "mismatched"}])
    experiment = load_experiment(str(spec))
    serial = run_experiment(experiment, tmp_path / "serial", progress=False)
    distributed = run_experiment(experiment, tmp_path / "ray", progress=False, ray="local", workers=2)
    assert len(serial) == 10 * 5
    _assert_same_rows(serial, distributed)
    # a run of some protocols: workers must pick the same ones, since units name protocols by position
    part = run_experiment(experiment.only(protocols=["ac_replace*"]), tmp_path / "part", progress=False,
                          ray="local", workers=2)
    _assert_same_rows([r for r in serial if r["protocol"].startswith("ac_replace")], part)
    assert ray.is_initialized()  # the caller's own Ray connection is left as it was


def test_killed_distributed_run_resumes_without_loss_or_duplicates(cluster, tmp_path, tiny_dir):
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, batch_size=2, tasks=[{"name": "countries", "n": 40}])
    out = tmp_path / "out"
    results = out / "results.jsonl"
    command = _cli(spec, "--out", out, "--ray", cluster, "--workers", 2)
    rows = kill_mid_run_and_resume(command, results, total=40 * 3, wait_s=180)
    serial = run_experiment(load_experiment(str(spec)), tmp_path / "serial", progress=False)
    _assert_same_rows(serial, rows)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_address_fails_fast_naming_it(tmp_path, tiny_dir):
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir)
    address = f"127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    with pytest.raises(RayUnreachableError, match=f"cannot reach a Ray cluster at {address}.*ray start --head"):
        run_experiment(load_experiment(str(spec)), tmp_path / "out", progress=False, ray=address)
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out").exists()  # refused before the results folder or any model
    with pytest.raises(RayUnreachableError, match="expects HOST:PORT.*'headnode'"):
        run_experiment(load_experiment(str(spec)), tmp_path / "out", progress=False, ray="headnode")
    done = subprocess.run(_cli(spec, "--out", tmp_path / "out", "--ray", address), capture_output=True, text=True,
                          timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and address in lines[0], done.stderr


@pytest.fixture
def listener():
    """A local port that accepts connections and answers each with ``reply`` (None: never answers)."""
    servers = []

    def serve(reply: bytes | None) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def answer():
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                servers.append(connection)
                if reply is not None:
                    connection.sendall(reply)

        threading.Thread(target=answer, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield serve
    for server in servers:
        server.close()


def test_an_open_port_that_is_not_ray_fails_fast(listener):
    silent = listener(None)  # a firewall or proxy that accepts and holds every connection
    start = time.perf_counter()
    with pytest.raises(RayUnreachableError, match=f"cannot reach a Ray cluster at {silent} .*timed out"):
        check_reachable(silent)
    assert time.perf_counter() - start < 10
    web = listener(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # e.g. the dashboard's port given by mistake
    with pytest.raises(RayUnreachableError, match=f"{web} answers, but not as a Ray cluster.*GCS port"):
        check_reachable(web)


def test_the_heads_port_passes_the_check(cluster):
    check_reachable(cluster)


def test_missing_ray_says_how_to_install(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as without the extra
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir)
    with pytest.raises(RayUnavailableError, match=r'pip install "interventions\[ray\]"'):
        run_experiment(load_experiment(str(spec)), tmp_path / "out", progress=False, ray="local")


def test_workers_without_ray_is_refused(tmp_path, tiny_dir):
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir)
    with pytest.raises(Exception, match="--workers.*--ray"):
        run_experiment(load_experiment(str(spec)), tmp_path / "out", progress=False, workers=2)


def test_rows_for_other_work_items_are_refused():
    unit = WorkUnit(pair=0, task=0, protocol=0, item_ids=("a", "b"), keys=("k1", "k2"))
    check_keys(unit, [{"key": "k1"}, {"key": "k2"}])
    with pytest.raises(WorkerMismatchError, match="1 of 2 keys differ.*same versions"):
        check_keys(unit, [{"key": "k1"}, {"key": "other"}])


PLUGIN = """
import os

from interventions.errors import InterventionError
from interventions.harness.protocols import register_protocol
from interventions.harness.protocols.single import Silent


@register_protocol("dies_once")
class DiesOnce(Silent):
    marker: str

    def run(self, ctx, items):
        if not os.path.exists(self.marker):  # the first unit kills its worker process outright
            open(self.marker, "w").close()
            os._exit(1)
        return super().run(ctx, items)


@register_protocol("refuses")
class Refuses(Silent):
    def run(self, ctx, items):
        raise InterventionError("this channel needs a map: fit one first")
"""


@pytest.fixture
def flaky_plugin(tmp_path):
    from interventions.harness.protocols import PROTOCOLS

    path = tmp_path / "flaky.py"
    path.write_text(PLUGIN)
    yield path
    for name in ("dies_once", "refuses"):
        if name in PROTOCOLS.names():
            del PROTOCOLS[name]


def test_a_dead_worker_is_restarted_and_its_unit_retried(cluster, tmp_path, tiny_dir, flaky_plugin):
    marker = tmp_path / "died"
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, plugins=[str(flaky_plugin)], batch_size=2,
                            tasks=[{"name": "countries", "n": 6}],
                            protocols=[{"kind": "silent"}, {"kind": "dies_once", "marker": str(marker)}])
    rows = run_experiment(load_experiment(str(spec)), tmp_path / "out", progress=False, ray="local", workers=2)
    assert marker.exists()  # a worker did die
    assert len(rows) == 6 * 2 and len({r["key"] for r in rows}) == len(rows)
    assert sum(r["protocol"] == "dies_once" for r in rows) == 6


def test_a_workers_user_error_is_one_line(cluster, tmp_path, tiny_dir, flaky_plugin):
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, plugins=[str(flaky_plugin)],
                            tasks=[{"name": "countries", "n": 4}], protocols=[{"kind": "refuses"}])
    with pytest.raises(InterventionError) as raised:
        run_experiment(load_experiment(str(spec)), tmp_path / "out", progress=False, ray="local")
    assert str(raised.value) == "this channel needs a map: fit one first"


@pytest.mark.real
def test_quickstart_on_ray_writes_the_serial_rows(cluster, tmp_path):
    experiment = load_experiment("quickstart")
    serial = run_experiment(experiment, tmp_path / "serial", limit=8, progress=False)
    distributed = run_experiment(experiment, tmp_path / "ray", limit=8, progress=False, ray="local", workers=2)
    assert len(serial) == 8 * 9 + 8 * 4  # countries: every protocol and control; arc_easy: no private context
    _assert_same_rows(serial, distributed)
