"""Distributed runs on Ray: the driver plans work units, worker actors run them, the driver writes rows.

Each worker is a Ray actor holding one ``UnitRunner``: it rebuilds the experiment from the YAML data
the driver read (plugins, tasks and protocols included), loads each model once through the runner's
own loading helper, and keeps the Session and caches of the pair it serves. The driver keeps one unit
in flight per worker and appends each unit's rows as it arrives (``ray.wait``), through the same
deduplication as a serial run, so a killed run loses at most the units in flight and resumes like any
other. Units are idempotent, so Ray may restart a dead worker and retry its unit.

Ray is an optional extra (``pip install "interventions[ray]"``); it is imported only here.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..errors import InterventionError
from ..models.cache import CACHE_ENV
from ..verified import VERIFY_ENV
from .experiment import build_experiment
from .units import UnitRunner, WorkUnit

LOCAL = "local"                        # --ray without an address: start a Ray instance on this machine
LOCAL_OBJECT_STORE_BYTES = 128 << 20   # results are small rows; Ray's default reserves 30% of memory
CONNECT_TIMEOUT_S = 3.0                # a dead address fails in seconds, not after Ray's 20 s of retries
FORWARDED_ENV = (CACHE_ENV, VERIFY_ENV, "HF_HUB_OFFLINE")   # the driver's settings that workers follow
HTTP2_SETTINGS = 0x4                   # frame type of a SETTINGS frame
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, HTTP2_SETTINGS, 0, 0, 0, 0, 0])  # + one, empty
RETRIES = 2                            # restarts of a dead worker, and retries of the unit it held


class RayUnavailableError(InterventionError):
    """``--ray`` without Ray installed."""


class RayUnreachableError(InterventionError):
    """A Ray address that cannot be reached or joined."""


class RayWorkerLostError(InterventionError):
    """A worker died more often than Ray restarts it."""


def ray_executor(address: str, workers: int | None):
    """A function ``(runner, units) -> iterator of (unit, rows)`` on Ray at ``address``: HOST:PORT,
    ``"local"`` (a new instance here) or ``"auto"`` (the cluster ``ray start`` began on this machine).
    The install and the address are checked now, before any model loads."""
    ray = _import_ray()
    if address not in (LOCAL, "auto"):
        check_reachable(address)

    def execute(runner: UnitRunner, units: list[WorkUnit]):
        if units:
            with _connected(ray, address):
                yield from _run_units(ray, runner, units, workers)

    return execute


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError('--ray needs Ray, which is not installed: pip install "interventions[ray]" '
                                  '(or pip install "ray>=2.9")') from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds, naming the address, unless a Ray head answers there. Its GCS is a gRPC server,
    which answers the HTTP/2 preface with a SETTINGS frame; an open port that stays silent (a firewall
    or proxy that accepts every connection) would otherwise hold Ray's own connect for 20 s or more."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as connection:
            connection.sendall(HTTP2_PREFACE)
            reply = _read(connection, 9)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise RayUnreachableError(f"cannot reach a Ray cluster at {address} ({reason}); start one there with "
                                  f"`ray start --head --port={port}`, or give --ray without an address to run "
                                  "on a local Ray instance") from None
    if len(reply) < 9 or reply[3] != HTTP2_SETTINGS:
        raise RayUnreachableError(f"{address} answers, but not as a Ray cluster: give the head's GCS port "
                                  "(the one `ray start --head` printed, 6379 by default)")


def _read(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnreachableError(f"--ray expects HOST:PORT (e.g. 10.0.0.5:6379), or no address for a local "
                                  f"Ray instance; got {address!r}")
    return host.strip("[]"), int(port)


@contextmanager
def _connected(ray, address: str):
    """Ray for the block: the caller's own ``ray.init`` if there is one (kept), else a connection made
    and shut down here."""
    if ray.is_initialized():
        yield
        return
    if address == LOCAL:
        options = dict(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                       object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    else:
        options = dict(address=address)
    try:
        ray.init(logging_level=logging.WARNING, **options)
    except Exception as error:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ValueError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = "a local Ray instance" if address == LOCAL else f"the Ray cluster at {address}"
        raise RayUnreachableError(f"could not start or join {where}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _run_units(ray, runner: UnitRunner, units: list[WorkUnit], workers: int | None):
    nodes = _cpu_nodes(ray)
    count = min(workers or len(nodes), len(units))
    worker_class = ray.remote(UnitWorker).options(**_actor_options(nodes, count))
    source = experiment_source(runner.experiment)
    settings = {"backend": runner.backend, "seed": runner.seed, "limit": runner.limit}
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    actors = [worker_class.remote(source, settings, env) for _ in range(count)]
    queue, in_flight = deque(units), {}

    def submit(actor):
        if queue:
            unit = queue.popleft()
            in_flight[actor.run_unit.remote(unit)] = (unit, actor)

    try:
        for actor in actors:
            submit(actor)
        while in_flight:
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            unit, actor = in_flight.pop(ready)
            rows = _result(ray, ready, runner.label(unit))
            submit(actor)  # before the driver writes, so the worker never waits on the disk
            yield unit, rows
    finally:
        for actor in actors:
            ray.kill(actor)


def _cpu_nodes(ray) -> list[dict]:
    nodes = [node for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU")]
    if not nodes:
        raise RayUnreachableError("the Ray cluster has no live node with CPUs to run workers on")
    return nodes


def _actor_options(nodes: list[dict], workers: int) -> dict:
    """Spread the workers over the nodes, each with an equal share of the smallest node's CPUs (torch's
    threads follow it) and of its GPUs, if any."""
    per_node = math.ceil(workers / len(nodes))
    share = lambda resource: min(n["Resources"].get(resource, 0) for n in nodes) / per_node  # noqa: E731
    cpus, gpus = share("CPU"), share("GPU")
    options = dict(num_cpus=math.floor(cpus) if cpus >= 1 else cpus, scheduling_strategy="SPREAD",
                   max_restarts=RETRIES, max_task_retries=RETRIES)
    if gpus:
        options["num_gpus"] = math.floor(gpus) if gpus >= 1 else gpus
    return options


def _result(ray, ref, label: str) -> list[dict]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, InterventionError):
            raise cause from None  # the user's mistake, said in one line as in a serial run
        raise
    except ray.exceptions.RayActorError as error:
        first = (str(error).strip().splitlines() or ["no reason given"])[0]
        raise RayWorkerLostError(f"the Ray worker running {label} died ({first}); the rows finished so far are "
                                 "saved, run the same command again to resume") from None


def experiment_source(experiment) -> dict:
    """What a worker rebuilds the experiment from: the YAML data and where it lives (plugins and data
    files named relative to it must be at the same paths on the workers)."""
    if experiment.path is None:
        raise InterventionError("a Ray run needs the experiment as a file: load it with load_experiment(path)")
    path = Path(experiment.path).resolve()
    # with --device/--dtype, and only the tasks, pairs and protocols of this run (units name them by position)
    data = {**yaml.safe_load(path.read_text()), "device": experiment.device, "dtype": experiment.dtype,
            "tasks": [entry.model_dump() for entry in experiment.tasks], "pairs": experiment.pairs}
    return {"data": data, "where": str(experiment.path), "path": str(path),
            "protocols": [protocol.name for protocol in experiment.protocols]}


class UnitWorker:
    """A Ray actor: one ``UnitRunner`` for the whole run, so each model loads once in this process.
    The runner is built on the first unit, so a bad experiment surfaces as that unit's error."""

    def __init__(self, source: dict, settings: dict, env: dict):
        self.source, self.settings = source, settings
        self.runner = None
        os.environ.update(env)

    def run_unit(self, unit: WorkUnit) -> list[dict]:
        if self.runner is None:
            path = Path(self.source["path"])
            experiment = build_experiment(self.source["data"], self.source["where"], path.parent, path)
            experiment = experiment.only(protocols=self.source["protocols"])
            self.runner = UnitRunner(experiment, **self.settings)
        return self.runner.run_unit(unit)
