"""Multi-process training, sampling and evaluation on CPU (gloo) through torchrun and torch's elastic launcher
(`elastic.launch`: torchrun's agent, its ranks forked from a process that imported torch once): same weights
and the same numbers as one process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elastic import launch
from elt.engine.train import train
from conftest import TINY, free_port, shared_run, tiny_cfg

ARGS = ["train.steps=20", "train.batch_size=8", "train.ckpt_every=10", "train.lr=1e-3"]


def _train_argv(out, extra=(), resume=False):
    sets = sum((["--set", s] for s in TINY + ARGS + list(extra)), [])
    return ["--quiet", "train", "--config", "digits-maskgit", "--out", str(out), *sets] + (["--resume"] if resume else [])


def torchrun(tmp_path, out, extra=(), nproc=2):
    """`torchrun --standalone --nproc_per_node=2 -m elt train ...`, the documented command, as a user runs it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "elt",
           *_train_argv(out, extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out / "checkpoints" / "last" / "model.safetensors"))


def elastic_train(out, extra=(), resume=False):
    """The same training through torch's elastic launcher, ranks forked (see the module docstring)."""
    launch(_train_argv(out, extra, resume), out.parent / f"{out.name}-logs")
    return load_file(str(out / "checkpoints" / "last" / "model.safetensors"))


def single(tmp_path, name, extra=()):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank computes (OMP_NUM_THREADS=1)
    try:
        train(tiny_cfg(20, ARGS + list(extra)), tmp_path / name, progress=False)
    finally:
        torch.set_num_threads(threads)
    return load_file(str(tmp_path / name / "checkpoints" / "last" / "model.safetensors"))


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The reference: one process trains ARGS' 20 steps (weights, and the run folder for its losses)."""
    folder = tmp_path_factory.mktemp("one_process")
    return single(folder, "one"), folder / "one"


def assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max weight difference {worst}"


def assert_same_logged_losses(a, b):
    """Logged loss parts are the global batch's, however the batch was split."""
    ra, rb = ([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b))
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for k in (k for k in x if k.startswith("loss")):
            assert abs(x[k] - y[k]) <= 1e-5 * max(1.0, abs(x[k])), (k, x[k], y[k])


def test_grad_accumulation_matches_one_big_batch(one, tmp_path):
    assert_close(one[0], single(tmp_path, "accum", ["train.grad_accum=2"]))
    assert_same_logged_losses(one[1], tmp_path / "accum")


@pytest.mark.slow
def test_ddp_two_processes_match_one(one, tmp_path):
    assert_close(one[0], torchrun(tmp_path, tmp_path / "ddp"))
    assert_same_logged_losses(one[1], tmp_path / "ddp")


@pytest.mark.slow
def test_two_nodes_c10d_rendezvous_match_one_process(one, tmp_path):
    """The multi-node recipe of docs/engine.md: two torchrun agents (two "nodes", one process each)
    meet through the c10d rendezvous on 127.0.0.1 and train the single-process weights — with gradient
    accumulation too (two micro-batches per rank: DDP's no_sync across the nodes), logging the same losses."""
    ref = one[0]
    out = tmp_path / "two_nodes"
    sets = sum((["--set", s] for s in TINY + ARGS + ["train.grad_accum=2"]), [])
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=elt-test", "-m", "elt", "--quiet", "train", "--config", "digits-maskgit", "--out", str(out),
               *sets]
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                       cwd=tmp_path))
    for agent in agents:
        _, err = agent.communicate(timeout=300)
        assert agent.returncode == 0, err[-3000:]
    assert_close(ref, load_file(str(out / "checkpoints" / "last" / "model.safetensors")))
    assert_same_logged_losses(one[1], out)


FSDP = ["train.parallel=fsdp", "train.keep_every=10"]  # keeps checkpoints/step_0000010 beside `last`


@pytest.fixture(scope="session")
def fsdp(tmp_path_factory):
    """ARGS' 20 steps sharded with FSDP2 over two processes, trained once for all parallel workers (the two
    tests below may run on different ones). Read-only."""
    yield from shared_run(tmp_path_factory, "fsdp", lambda run: elastic_train(run, FSDP))


def test_fsdp2_trains_and_saves_full_weights(one, fsdp):  # not `slow`: the slow test below trains `fsdp` first
    ref, got = one[0], load_file(str(fsdp / "checkpoints" / "last" / "model.safetensors"))
    assert all(got[k].shape == ref[k].shape for k in ref)
    assert_close(ref, got)


@pytest.mark.slow
def test_fsdp2_resume_continues_exactly(one, fsdp, tmp_path):
    """The FSDP2 run put back to its step-10 checkpoint (the kept copy in place of `last`, as elt's message
    for a damaged checkpoint says) and resumed under FSDP2 ends at one process's 20-step weights (which FSDP2
    matches: the test above) — shards re-laid from the full saved states, optimizer moments and RNG included."""
    run = Path(shutil.copytree(fsdp, tmp_path / "resumed"))
    shutil.rmtree(run / "checkpoints" / "last")
    shutil.copytree(run / "checkpoints" / "step_0000010", run / "checkpoints" / "last")
    before = (run / "metrics.jsonl").read_text().splitlines()
    assert_close(one[0], elastic_train(run, FSDP, resume=True))
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in after] == list(range(2, 21, 2))
    # the records of steps 2..10 are the first launch's (their measured steps/s included): only 11..20 trained again
    assert after[:5] == before[:5] and all(a != b for a, b in zip(after[5:], before[5:]))


@pytest.mark.slow
def test_sampling_and_evaluation_split_across_ranks(masked_run, run_copy, tmp_path):
    import numpy as np

    run = run_copy(masked_run)
    logs = tmp_path / "logs"
    launch(["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "10", "--out", str(tmp_path / "s")], logs / "s")
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (10, 8, 8, 1) and z["labels"].tolist() == list(range(10))
    assert len({z["images"][i].tobytes() for i in range(10)}) > 1  # ranks did not all draw the same sample
    launch(["--quiet", "evaluate", "--run", str(run), "--loops", "1,2", "--n", "20"], logs / "e")
    report = json.loads((run / "anytime.json").read_text())
    assert report["sampling"]["n"] == 20 and list(report["loops"]) == ["1", "2"]
    # `sample --folder`: ranks take whole shards; the set equals one process's, shard by shard
    folder = ["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "30", "--shard-size", "7"]
    launch(folder + ["--folder", str(tmp_path / "two")], logs / "f")
    from elt.apps.cli import main
    assert main([*folder, "--folder", str(tmp_path / "one")]) == 0
    (two,), (one,) = (list((tmp_path / d).iterdir()) for d in ("two", "one"))
    assert two.name == one.name
    with np.load(two / "samples.npz") as a, np.load(one / "samples.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


STATS_SCRIPT = """
import sys, numpy as np, torch.distributed as dist
from elt.metrics.scores import StreamingStats
dist.init_process_group("gloo")
f = np.random.default_rng(0).normal(size=(101, 5))
s = StreamingStats(5)
s.update(f[dist.get_rank()::dist.get_world_size()])
mu, cov = s.reduce().mean_cov()
if dist.get_rank() == 0:
    np.savez(sys.argv[1], mu=mu, cov=cov, n=s.n)
dist.destroy_process_group()
"""


def test_streaming_stats_reduce_across_ranks(tmp_path):
    import numpy as np

    script = tmp_path / "stats.py"
    script.write_text(STATS_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = np.random.default_rng(0).normal(size=(101, 5))
    z = np.load(tmp_path / "out.npz")
    assert int(z["n"]) == 101
    np.testing.assert_allclose(z["mu"], f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(z["cov"], np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_fid_split_across_ranks_matches_one_process(tmp_path, monkeypatch):
    """`elt fid` under torchrun: each rank streams a share of the images; the reduced statistics,
    gathered logits and precision/recall features give one process's numbers."""
    from elt.apps.cli import main
    from elt.engine.media import export_adm_npz
    from test_paper_scale import images, random_inception

    weights = random_inception(tmp_path / "inception.pth")
    samples = export_adm_npz(images(7, size=24, seed=1), tmp_path / "samples.npz")
    ref = export_adm_npz(images(9, size=24, seed=3), tmp_path / "ref.npz")
    args = ["fid", "--samples", str(samples), "--ref", str(ref), "--inception", str(weights), "--batch-size", "2"]
    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path / "cache1"))
    assert main(["--quiet", *args, "--json", str(tmp_path / "one.json")]) == 0
    launch(["--quiet", *args, "--json", str(tmp_path / "two.json")], tmp_path / "logs",
           env={"ELT_CACHE_DIR": str(tmp_path / "cache2")})
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["n_samples"] == one["n_samples"] == 7
    assert one["fid"] > 1  # features that differ between images: the comparison below means something
    for k in ("fid", "is", "is_std", "precision", "recall"):
        assert two[k] == pytest.approx(one[k], rel=1e-6, abs=1e-9), k
    assert len(list((tmp_path / "cache2").glob("inception-ref-*.npz"))) == 1  # written once, by rank 0


def _documented_torchrun_commands():
    """Every `torchrun ... $(which elt) ...` command line in the README and docs."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            for cmd in re.findall(r"torchrun [^`]*\$\(which elt\)[^`]*", line):
                if "..." not in cmd:  # an elided example
                    verb = cmd.split("$(which elt)")[1].split()[0]
                    yield pytest.param(cmd.strip(), id=f"{doc.name}:{verb}:{len(cmd)}")


@pytest.mark.parametrize("cmd", list(_documented_torchrun_commands()))
def test_documented_torchrun_commands_parse(cmd):
    """torchrun's parser claims abbreviations of its own options anywhere on the line (`--run` is
    ambiguous with its `--run-path`): each documented command must get through torchrun's parser and
    then elt's."""
    import shlex

    from torch.distributed.run import get_args_parser

    from elt.apps.cli import build_parser

    argv = [{"L": "3"}.get(a, a) for a in shlex.split(cmd.replace("$(which elt)", "elt"))[1:]]
    try:
        script = get_args_parser().parse_args(argv)
        build_parser().parse_args(script.training_script_args)
    except SystemExit:
        pytest.fail(f"documented command does not parse: {cmd}")
