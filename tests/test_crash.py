"""`elt train --resume` killed with SIGKILL at random moments ends bit-identical to a run never killed."""
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, tiny_cfg
from elt.engine.checkpoint import find_checkpoint, read_state
from elt.engine.train import train

STEPS = 80  # five kills land within the first ~40 steps (each process starts, passes the last kill, then runs 0-0.3 s)


def _argv(out):
    sets = sum((["--set", s] for s in TINY + [f"train.steps={STEPS}", "train.ckpt_every=1"]), [])
    # ckpt_every=1: a checkpoint is written at every step, so kills also land in the middle of writes
    return ["--quiet", "train", "--config", "digits-maskgit", "--out", str(out), "--resume", *sets]


def _step(run) -> int:
    found = find_checkpoint(run)
    try:
        return -1 if found is None else int(read_state(found)["step"])
    except ValueError:  # caught between writing and renaming: the next poll sees it
        return -1


def _check_readable(run) -> None:
    found = find_checkpoint(run)
    for name in ("model.safetensors", "ema.safetensors"):
        load_file(str(found / name))
    torch.load(found / "optimizer.pt", weights_only=True)
    read_state(found)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """The killed trainings are forks of one process that imported torch and elt once (the test helper's
    forkserver): each is its own process running `elt train --resume` from its start, without ~3 s of imports."""
    import elastic

    ctx = elastic.forkserver()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed processes train (OMP_NUM_THREADS=1): the same arithmetic
    try:  # the run never killed, trained in this process
        train(tiny_cfg(STEPS), tmp_path / "straight", progress=False)  # checkpoints do not change the maths
    finally:
        torch.set_num_threads(threads)
    run, rng, killed_at = tmp_path / "killed", random.Random(0), []
    for _ in range(5):
        before = _step(run)
        proc = ctx.Process(target=elastic.cli, args=(_argv(run),))
        proc.start()
        deadline = time.time() + 120
        while _step(run) <= before and proc.is_alive() and time.time() < deadline:
            time.sleep(0.02)  # until it trains past where it was last killed
        time.sleep(rng.uniform(0.0, 0.3))  # then a random moment
        proc.kill()  # SIGKILL
        proc.join()
        killed_at.append(_step(run))
        _check_readable(run)  # every kill leaves a loadable checkpoint
    assert len(set(killed_at)) == 5 and max(killed_at) < STEPS, killed_at  # really interrupted mid-run
    # the last resume is a plain `elt train --resume` process, as a user runs it
    subprocess.run([sys.executable, "-m", "elt", *_argv(run)], env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
                   timeout=300)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / "last" / name))
        b = load_file(str(run / "checkpoints" / "last" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # one record per logged step, no repeats
