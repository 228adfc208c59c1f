"""Run a scenario: independent seeded replications on an engine, summarised into one result."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from capsim.arrivals import generate
from capsim.config import Scenario
from capsim.metrics import SimulationResult, summarize
from capsim.errors import CapsimError, ScenarioError
from capsim.sim.engine import ReplicationTrace, SimPyEngine


def replication_seeds(seed: int, replications: int) -> list[tuple[np.random.SeedSequence, np.random.SeedSequence]]:
    """(arrivals, service) seed sequences for each replication, all spawned from one root seed."""
    root = np.random.SeedSequence(seed)
    return [tuple(rep.spawn(2)) for rep in root.spawn(replications)]


def run_replication(sc: Scenario, rep: int, engine=None) -> ReplicationTrace:
    """One replication of ``sc`` (0-based ``rep``), reproducible from the scenario's seed alone."""
    if engine is None and sc.arrivals.process == "closed":
        from capsim.sim.closed import ClosedLoopEngine

        engine = ClosedLoopEngine(sc)
    engine = engine or SimPyEngine(sc)
    arr_ss, svc_ss = replication_seeds(sc.run.seed, rep + 1)[rep]
    if getattr(engine, "closed_loop", False):  # think times take the place of the arrival stream
        return engine.run(np.random.default_rng(arr_ss), np.random.default_rng(svc_ss))
    arrivals = generate(sc.arrivals, sc.run.requests, np.random.default_rng(arr_ss), sc.base_dir, sc.priority)
    return engine.run(arrivals, np.random.default_rng(svc_ss))


ENGINES = ("auto", "simpy", "fast")


def not_modelled(sc: Scenario) -> list[str]:
    """Scenario fields that no engine models yet (refused rather than silently ignored). Every
    field of today's scenario model is modelled; a new field starts here until an engine runs it."""
    return []


def make_engine(sc: Scenario, engine: str = "auto"):
    """The engine to run ``sc`` on: ``simpy`` (the reference), ``fast`` (compiled, identical results
    for the topologies it supports) or ``auto`` (fast when it supports the scenario, else simpy)."""
    if engine not in ENGINES:
        raise CapsimError(f"--engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    missing = not_modelled(sc)
    if missing:
        raise CapsimError(f"{missing[0]}: not modelled yet by capsim's engines; remove it")
    if sc.arrivals.process == "closed" and engine != "fast":
        from capsim.sim.closed import ClosedLoopEngine

        return ClosedLoopEngine(sc)
    if engine == "simpy":
        return SimPyEngine(sc)
    from capsim.sim.fast import FastEngine, unsupported_features

    missing = unsupported_features(sc)
    if engine == "fast" and missing:
        raise CapsimError(f"--engine fast: the fast engine does not model {', '.join(missing)}; "
                          "use --engine simpy or auto")
    return SimPyEngine(sc) if missing else FastEngine(sc)


def simulate(sc: Scenario, progress: Callable[[int, int], None] | None = None,
             engine: str = "auto") -> SimulationResult:
    """Simulate every replication of ``sc`` and summarise; ``progress(done, total)`` is called after each."""
    engine = make_engine(sc, engine)
    traces = []
    for rep in range(sc.run.replications):
        traces.append(run_replication(sc, rep, engine))
        if progress:
            progress(rep + 1, sc.run.replications)
    if len(traces[0].arrival) <= sc.run.warmup_requests:
        raise ScenarioError([f"run.warmup_requests: the arrivals hold only {len(traces[0].arrival)} requests, "
                             f"not more than the {sc.run.warmup_requests} of warm-up; lower run.warmup_requests"])
    return summarize(sc, traces, engine.name)
