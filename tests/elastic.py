"""Test helper: `elt` commands across ranks through torch's elastic launcher (the agent `torchrun` runs:
the same rendezvous, the same RANK / WORLD_SIZE / MASTER_ADDR environment for each rank), started from a
process that imported torch and elt once, its ranks forked from it. A launch costs milliseconds instead of
three interpreter starts (~7 s of CPU); `torchrun` itself, spelled as the docs spell it, runs in the DDP,
two-node and streaming-statistics tests.

multiprocessing's forkserver is that process: a fresh one (no threads of pytest's), started once per test
worker with OMP_NUM_THREADS=1, as torchrun starts each rank. test_crash forks its killed trainings from it.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import uuid
from pathlib import Path

PRELOAD = ["torch", "torch._dynamo", "torch.distributed.launcher.api", "elt.apps.cli", "elt.engine.train", "elastic"]


def forkserver():
    """The forkserver context, its server started (once) with OMP_NUM_THREADS=1 in its environment."""
    from multiprocessing import forkserver as server
    from unittest import mock

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        server.ensure_running()
    return ctx


def cli(argv: list[str]) -> int:
    """One rank: `elt ARGV` (as `python -m elt` runs it), at one thread like a torchrun rank."""
    import torch

    from elt.apps.cli import main

    torch.set_num_threads(1)
    return main(list(argv))


def _agent(argv: list[str], nproc: int, log_dir: str, env: dict) -> None:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.clear()
    os.environ.update(env)  # the test's environment at the launch, as a subprocess would inherit it
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()), max_restarts=0, start_method="fork",
                          logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects=Std.ALL))  # as `torchrun --standalone`
    codes = elastic_launch(config, cli)(argv)
    sys.exit(0 if all(code == 0 for code in codes.values()) else 1)


def launch(argv: list[str], log_dir: Path, nproc: int = 2, env: dict | None = None, timeout: float = 300) -> None:
    """`torchrun --standalone --nproc_per_node=NPROC -m elt ARGV`, ranks forked; every rank's output goes to
    LOG_DIR, and its end is shown when a rank fails."""
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"}
    proc = forkserver().Process(target=_agent, args=(list(argv), nproc, str(log_dir), env))
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    if proc.exitcode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(Path(log_dir).rglob("*.log")))
        raise AssertionError(f"elt {' '.join(argv)} across {nproc} ranks exited {proc.exitcode}\n{logs}")
