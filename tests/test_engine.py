"""Training engine: checkpoint round trips, exact resume, the CLI end to end on digits."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, tiny_cfg
from elt.apps.cli import main
from elt.engine.train import train
from elt.presets import get_preset


def _weights(run):
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def test_resume_continues_exactly(tmp_path, monkeypatch):
    import elt.engine.train as engine_train

    train(tiny_cfg(6), tmp_path / "straight", progress=False)
    real_save = engine_train.save_checkpoint

    def crash_after_step_3(run, model, ema, opt, step, gen, config_text=""):
        real_save(run, model, ema, opt, step, gen, config_text)
        if step == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(engine_train, "save_checkpoint", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(6, ["train.ckpt_every=3"]), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(engine_train, "save_checkpoint", real_save)
    train(tiny_cfg(6, ["train.ckpt_every=3"]), tmp_path / "resumed", resume=True, progress=False)
    a, c = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for k in a:
        assert torch.equal(a[k], c[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_existing_run_is_not_overwritten(tmp_path):
    train(tiny_cfg(2), tmp_path / "run", progress=False)
    before = _weights(tmp_path / "run")
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_cfg(2), tmp_path / "run", progress=False)
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_round_trip_is_exact(tmp_path):
    from elt.engine.run import load_run

    train(tiny_cfg(3, ["train.ema_decay=0"]), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    saved = _weights(tmp_path / "run")
    assert run.step == 3
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())


def test_cli_train_sample_evaluate_on_digits(tmp_path, capsys):
    run = tmp_path / "run"
    sets = sum((["--set", s] for s in TINY), [])
    assert main(["--quiet", "train", "--config", "digits-maskgit", "--out", str(run), "--steps", "8", *sets]) == 0
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    # the run's resolved config is itself a valid --config
    assert main(["--quiet", "train", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again"),
                 "--steps", "2"]) == 0

    out = tmp_path / "s"
    assert main(["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "20", "--out", str(out), "--seed", "3"]) == 0
    z = np.load(out.with_suffix(".npz"))
    assert z["images"].shape == (20, 8, 8, 1) and z["images"].dtype == np.uint8
    assert z["labels"].dtype == np.int64 and np.bincount(z["labels"]).tolist() == [2] * 10
    assert out.with_suffix(".png").is_file()
    assert main(["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "20", "--out", str(tmp_path / "t"),
                 "--seed", "3"]) == 0
    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], z["images"])  # same seed, same samples
    assert main(["--quiet", "sample", "--run", str(run), "--loops", "1", "--n", "6", "--out", str(tmp_path / "c"),
                 "--classes", "3,5"]) == 0
    assert set(np.load(tmp_path / "c.npz")["labels"].tolist()) == {3, 5}
    for k, how in enumerate((["--no-ema"], ["--set", "sample.use_ema=false"])):  # the flag and the override
        out = tmp_path / f"raw{k}"
        assert main(["--quiet", "sample", "--run", str(run), "--loops", "1", "--n", "2", "--out", str(out), *how]) == 0
        assert "'ema': False" in str(np.load(out.with_suffix(".npz"))["settings"])

    assert main(["--quiet", "evaluate", "--run", str(run), "--loops", "1,2,5", "--n", "20"]) == 0
    report = json.loads((run / "anytime.json").read_text())
    assert report["lmin"] == 1 and report["lmax"] == 4 and list(report["loops"]) == ["1", "2", "5"]
    for r in report["loops"].values():
        assert {"acc_digits_cnn", "fd_digits_cnn", "seconds_per_sample", "gflops_per_sample"} <= set(r)
    assert report["loops"]["5"]["gflops_per_sample"] > report["loops"]["1"]["gflops_per_sample"]
    assert (run / "anytime.png").is_file()
    assert "acc_digits_cnn" in capsys.readouterr().out
    ema_copies = set((run / "eval").glob("*.json"))
    assert main(["--quiet", "evaluate", "--run", str(run), "--loops", "1", "--n", "20", "--no-ema"]) == 0
    raw = set((run / "eval").glob("*.json")) - ema_copies  # a copy of its own: the EMA report is kept
    assert [p.stem.endswith("_raw") for p in raw] == [True]
    assert json.loads(raw.pop().read_text())["sampling"]["ema"] is False


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--run", "{missing}", "--loops", "1", "--n", "2", "--out", "{tmp}/x"], "not a run folder"),
    (["sample", "--run", "{run}", "--loops", "1", "--n", "2", "--out", "{tmp}/x", "--classes", "12"], "outside 0..9"),
    (["sample", "--run", "{run}", "--loops", "1", "--n", "2", "--out", "{tmp}/nodir/x"], "does not exist"),
    (["sample", "--run", "{run}", "--loops", "1", "--n", "2", "--out", "{tmp}/x", "--guidance", "-1"], "--guidance"),
    (["evaluate", "--run", "{run}", "--loops", "0,1"], "--loops"),
    (["evaluate", "--run", "{run}", "--loops", "1,17"], "loop count 17 is above 16"),  # tiny_cfg: Lmax 4
    (["sample", "--run", "{run}", "--schedule", "ramp:1:40", "--n", "2", "--out", "{tmp}/x"], "use loop counts 1..16"),
    (["schedules", "--run", "{run}", "--max-loops", "20"], "loop count 20 is above 16"),
    (["evaluate", "--run", "{run}", "--device", "tpu"], "invalid choice: 'tpu' (choose from 'auto', 'cpu', 'cuda')"),
    (["evaluate", "--run", "{run}", "--set", "model.width=64"], "only sample.* settings"),
    (["sample", "--run", "{run}", "--loops", "1", "--n", "2", "--out", "{tmp}/x", "--set", "sample.temp_base=0"],
     "sample.temp_base: must be > 0"),
    (["sample", "--run", "{run}", "--loops", "1", "--n", "2", "--out", "{tmp}/x", "--set", "sample.steps=abc"],
     "expected an integer, got 'abc'"),  # the message's own closing quote stays
    pytest.param(["sample", "--run", "{run}", "--loops", "1", "--n", "2", "--out", "{tmp}/x", "--device", "cuda"],
                 "no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")),
    (["train", "--config", "digits-maskgit", "--out", "{run}", "--set", "model.max_loop=3"], "did you mean 'max_loops'"),
    (["train", "--config", "{tmp}/nope.yaml", "--out", "{tmp}/r2"], "not found"),
    (["train", "--config", "digits-maskgit", "--out", "{run}"], "--resume"),
])
def test_cli_bad_input_is_one_line_exit_2(masked_run, run_copy, tmp_path, capsys, argv, needle):
    run = run_copy(masked_run)
    before = sorted(p.name for p in run.rglob("*"))
    fill = {"{missing}": str(tmp_path / "missing"), "{run}": str(run), "{tmp}": str(tmp_path)}
    argv = [a.replace(k, v) if k in a else a for a in argv for k, v in [next(((k, v) for k, v in fill.items() if k in a), ("", ""))]]
    try:
        code = main(["--quiet", *argv])
    except SystemExit as e:  # argparse's own checks (types, choices) exit while parsing
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elt") and ": error:" in err[0] and needle in err[0], err
    assert sorted(p.name for p in run.rglob("*")) == before


def test_cli_rejects_zero_loops(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--run", "x", "--loops", "0", "--n", "1", "--out", "y"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be >= 1" in err[0] and "--help" in err[0], err


def test_sigterm_saves_and_exits_cleanly(tmp_path, monkeypatch):
    import os
    import signal

    import elt.engine.step as engine_step
    import elt.engine.train as engine_train
    from elt.engine.checkpoint import read_state

    real_update = engine_step.ema_update
    calls = {"n": 0}

    def ema_then_signal(*a):
        real_update(*a)
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(engine_step, "ema_update", ema_then_signal)
    with pytest.raises(engine_train.TrainingInterrupted, match="SIGTERM at step 2"):
        train(tiny_cfg(10), tmp_path / "run", progress=False)
    assert read_state(tmp_path / "run" / "checkpoints" / "last")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_nonfinite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    from elt.masked import MaskedFramework

    real = MaskedFramework.gt_loss
    monkeypatch.setattr(MaskedFramework, "gt_loss", lambda self, *a: real(self, *a) * float("nan"))
    with pytest.raises(FloatingPointError, match="max_nonfinite=2"):
        train(tiny_cfg(10, ["train.max_nonfinite=2"]), tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_count"] for r in records] == [1, 2, 3]


def test_periodic_keeps(tmp_path):
    train(tiny_cfg(4, ["train.keep_every=2", "train.ckpt_every=3"]), tmp_path / "run", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["last", "step_0000002", "step_0000004"]


def test_resume_with_changed_model_is_refused(tmp_path):
    train(tiny_cfg(2), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ValueError, match="model.width"):
        train(tiny_cfg(4, ["model.width=64"]), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    train(tiny_cfg(4), tmp_path / "run", resume=True, progress=False)  # more steps is fine


def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path, capsys):
    train(tiny_cfg(2), tmp_path / "run", progress=False)
    weights = tmp_path / "run" / "checkpoints" / "last" / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["--quiet", "sample", "--run", str(tmp_path / "run"), "--loops", "1", "--n", "2",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "ema.safetensors" in err and "unreadable" in err
    with pytest.raises(ValueError, match="unreadable"):
        train(tiny_cfg(4), tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize("tokenizer", [["tokenizer.kind=pixel"],
                                       ["tokenizer.kind=klvae", "tokenizer.downsample_stages=1", "tokenizer.steps=20",
                                        "tokenizer.hidden=16", "model.patch_size=1"]])
def test_cli_diffusion_train_sample_evaluate_on_digits(diffusion_run, run_copy, tmp_path, capsys, tokenizer):
    if tokenizer == ["tokenizer.kind=pixel"]:  # the preset's own tokenizer: the session's run
        run = run_copy(diffusion_run)
    else:
        run = tmp_path / "run"
        sets = sum((["--set", s] for s in TINY + tokenizer), [])
        assert main(["--quiet", "train", "--config", "digits-dit", "--out", str(run), "--steps", "6", *sets]) == 0
    assert ((run / "tokenizer.safetensors").is_file()) == ("tokenizer.kind=klvae" in tokenizer)
    out = tmp_path / "s"
    args = ["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "10", "--steps", "3", "--guidance", "2"]
    assert main([*args, "--out", str(out), "--seed", "1"]) == 0
    z = np.load(out.with_suffix(".npz"))
    assert z["images"].shape == (10, 8, 8, 1) and z["images"].dtype == np.uint8
    assert np.bincount(z["labels"]).tolist() == [1] * 10
    assert "'sampler': 'ddim'" in str(z["settings"]) and "'guidance': 2.0" in str(z["settings"])
    assert main([*args, "--out", str(tmp_path / "again"), "--seed", "1"]) == 0
    assert np.array_equal(np.load(tmp_path / "again.npz")["images"], z["images"])  # same seed, same samples
    assert main(["--quiet", "evaluate", "--run", str(run), "--loops", "1,3", "--n", "20"]) == 0
    report = json.loads((run / "anytime.json").read_text())
    assert report["sampling"]["sampler"] == "ddim" and report["sampling"]["steps"] == 4
    assert report["loops"]["3"]["gflops_per_sample"] == pytest.approx(3 * report["loops"]["1"]["gflops_per_sample"],
                                                                      rel=0.2)
    assert "fd_digits_cnn" in capsys.readouterr().out


def test_cli_presets_lists_every_preset_with_size_and_flops(capsys):
    from elt.presets import ALIASES, PRESETS

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        if name not in ALIASES:
            line = next(l for l in out.splitlines() if l.startswith(name + " "))
            cells = line.split()  # name N Lmax width tokens params GFLOPs [the paper's count]
            assert cells[5].endswith("M") and float(cells[6]) > 0
    from elt.presets import PAPER_PARAMS
    assert set(PAPER_PARAMS) <= set(PRESETS)
    assert "maskgit-L-8Nx3L" in out and " 101M" in next(l for l in out.splitlines() if l.startswith("maskgit-L-8Nx3L"))
    for scale in ("maskgit-B-6Nx2L", "maskgit-H-8Nx4L"):  # the throughput table's other scales
        assert scale in out
    assert get_preset("maskgit-H-8Nx4L").train.weight_decay == pytest.approx(5 * 0.045)


def test_sample_folder_is_balanced_resumable_and_named_by_its_settings(masked_run, run_copy, tmp_path, capsys):
    """`elt sample --folder`: shards of a class-balanced set, a manifest, samples.npz + ADM npz; a
    rerun after a lost shard makes only that shard, identical to the first time; other settings are
    refused in the same folder."""
    run = run_copy(masked_run)
    args = ["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "20", "--folder", str(tmp_path / "s"),
            "--shard-size", "8", "--seed", "5"]
    assert main(args) == 0
    (folder,) = (tmp_path / "s").iterdir()
    assert folder.name.startswith("run_ckpt4_L2_K4_guidance") and "_seed5_n20" in folder.name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_shards"] == 3 and manifest["settings"]["loops"] == 2
    assert sorted(manifest["per_class"].values()) == [2] * 10  # digits: 10 classes, 2 each
    with np.load(folder / "samples.npz") as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (20, 8, 8, 1) and np.bincount(labels).tolist() == [2] * 10
    with np.load(folder / "samples_adm.npz") as z:
        assert z["arr_0"].shape == (20, 8, 8, 3) and z["arr_0"].dtype == np.uint8
    (folder / "shard_00001.npz").unlink()
    (folder / "samples.npz").unlink()
    assert main(args) == 0
    with np.load(folder / "samples.npz") as z:
        np.testing.assert_array_equal(z["images"], images)  # shard seeds do not depend on the order of work
    assert main([*args[:-2], "--seed", "6"]) == 0  # another seed: another folder
    assert len(list((tmp_path / "s").iterdir())) == 2
    assert main([*args, "--set", "sample.choice_temperature=1"]) == 0  # another temperature: another folder
    (hot,) = [f for f in (tmp_path / "s").iterdir() if "_choice1_" in f.name]
    assert json.loads((hot / "manifest.json").read_text())["settings"]["choice_temperature"] == 1.0
    with np.load(hot / "samples.npz") as z:
        assert not np.array_equal(z["images"], images)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "settings": {"loops": 9}}))
    assert main(args) == 2
    assert "other settings" in capsys.readouterr().err


def test_one_demo_loads_each_split_once_and_hashes_no_image_array(tmp_path, monkeypatch):
    """`elt demo` prepares its data once: every split is loaded at most once (training, the metric
    classifier and the evaluation share it), and no cache key is made by hashing images — keys come from
    the data's identity (its source files' digest), so nothing an image array holds is ever hashed."""
    import hashlib

    import elt.data

    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached: everything is built once
    loads, hashed = [], []
    real_load = elt.data.load_data

    def counted(dataset, split, *a, **k):
        loads.append((dataset, split))
        return real_load(dataset, split, *a, **k)

    def recording(make):
        def new(data=b"", **k):
            h = make(**k)
            real_update = h.update

            class Recorded:
                def update(self, b):
                    hashed.append(bytes(b))
                    real_update(b)

                def __getattr__(self, name):
                    return getattr(h, name)
            r = Recorded()
            r.update(data)
            return r
        return new

    monkeypatch.setattr(elt.data, "load_data", counted)
    monkeypatch.setattr(hashlib, "sha1", recording(hashlib.sha1))
    monkeypatch.setattr(hashlib, "sha256", recording(hashlib.sha256))
    tokenizer = ["tokenizer.kind=vqvae", "tokenizer.codebook_size=16", "tokenizer.latent_dim=4", "tokenizer.hidden=8",
                 "tokenizer.downsample_stages=1", "tokenizer.steps=3", "tokenizer.batch_size=16"]
    assert main(["--quiet", "demo", "--config", "digits-maskgit", "--out", str(tmp_path / "run"),
                 *sum((["--set", s] for s in TINY + tokenizer + ["train.steps=4", "eval.loops=[1,2]"]), [])]) == 0
    assert sorted(loads) == [("digits", "test"), ("digits", "train")]
    assert (tmp_path / "cache").glob("vqvae-*") and list((tmp_path / "cache").glob("classifier-*"))
    for split in ("train", "test"):
        images = real_load("digits", split).images
        probe = images[:4].tobytes()  # 256 bytes of the first images: in a hashed buffer only if images were hashed
        assert not any(probe in buffer for buffer in hashed), split


@pytest.mark.parametrize("steps, warmup, decay, warned", [(100, 10, 0.999, True), (100, 10, 0.9, False),
                                                         (2, 30, 0.999, False), (30, 30, 0.999, False)])
def test_long_ema_warning_only_where_the_ema_would_lag(caplog, steps, warmup, decay, warned):
    """The EMA copies the weights during warm-up: a run that ends within it gets no warning (it once said
    "trains -28 steps after warm-up"); one whose averaging horizon outlasts its post-warm-up steps does."""
    from elt.engine.train import _warn_long_ema

    _warn_long_ema(tiny_cfg(steps, [f"train.warmup_steps={warmup}", f"train.ema_decay={decay}"]))
    lines = [r.getMessage() for r in caplog.records if "ema_decay" in r.getMessage()]
    assert bool(lines) == warned, lines
    if warned:
        assert f"this run trains {steps - warmup} after warm-up" in lines[0] and "e.g. 0.967" in lines[0]


def test_another_ranks_write_probe_does_not_make_a_folder_look_used(tmp_path):
    """Every torchrun rank checks the run folder is writable (a probe file, there for a moment) while rank 0
    checks it is new or an elt run: ranks started together once made rank 0 refuse its own new folder."""
    from elt.engine.run import prepare_run_dir
    from elt.utils.files import PROBE, check_writable, refuse_existing

    out = tmp_path / "run"
    out.mkdir()
    (out / f"{PROBE}12345").write_bytes(b"")  # rank 1's probe, caught between its write and its unlink
    prepare_run_dir(out, resume=False)
    refuse_existing([out], overwrite=False)
    check_writable(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an elt run \\(notes.txt, ...\\)"):
        prepare_run_dir(out, resume=False)
