"""A trained model leaves elt: the Python API (`elt.load(...).generate(...)`), the Hugging Face Hub layout
(`elt export`, its model card, `elt push`, loading a Hub id through huggingface_hub's cache — against a
local stand-in for the Hub's HTTP API), and ONNX graphs per loop count run by onnxruntime."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import elt
from elt.apps.cli import main

ONNX = pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra (make setup installs it)")


@pytest.fixture(scope="module")
def evaluated(masked_run, tmp_path_factory):
    """A copy of the masked run with its any-time report (L = 1, 2, 4)."""
    import shutil

    run = shutil.copytree(masked_run, tmp_path_factory.mktemp("evaluated") / "run")
    assert main(["--quiet", "evaluate", "--run", str(run), "--loops", "1,2,4", "--n", "20"]) == 0
    return run


def _sampled(tmp_path, run, *args) -> np.ndarray:
    out = tmp_path / f"s{len(list(tmp_path.glob('s*.npz')))}"
    assert main(["--quiet", "sample", "--run", str(run), "--out", str(out), *args]) == 0
    return np.load(out.with_suffix(".npz"))["images"]


def test_python_api_is_the_sample_command_bit_for_bit(masked_run, tmp_path):
    model = elt.load(masked_run)
    assert model.classes == [str(i) for i in range(10)] and model.loops == (1, 4) and model.framework == "masked"
    assert model.gflops(4) == pytest.approx(4 * model.gflops(1), rel=0.1) and model.gflops(4) > model.gflops(1)
    images = model.generate(classes=[0, 3, 7], loops=4, seed=0)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert np.array_equal(images, _sampled(tmp_path, masked_run, "--loops", "4", "--n", "3", "--classes", "0,3,7"))
    ramp = model.generate(n=20, loops="ramp:1:4", steps=6, guidance=1.5, seed=1)
    same = _sampled(tmp_path, masked_run, "--schedule", "ramp:1:4", "--n", "20", "--steps", "6", "--guidance", "1.5",
                    "--seed", "1")
    assert ramp.shape == (20, 8, 8, 1) and np.array_equal(ramp, same)
    raw = model.generate(classes=["3"], n=4, loops=2, seed=2, ema=False)  # a class by name; the raw weights
    assert np.array_equal(raw, _sampled(tmp_path, masked_run, "--loops", "2", "--n", "4", "--classes", "3",
                                        "--seed", "2", "--no-ema"))
    assert np.array_equal(model.generate(n=4, adaptive=0.05, seed=3), model.generate(n=4, adaptive=0.05, seed=3))


@pytest.mark.parametrize("kwargs,needle", [
    ({"n": 0}, "n must be >= 1"), ({"n": True}, "n must be an integer"), ({"seed": -5}, "seed must be in 0.."),
    ({"seed": 2 ** 70}, "seed must be in 0.."), ({"guidance": float("inf")}, "guidance must be a number in 0..1000"),
    ({"steps": 0}, "steps must be >= 1"), ({"classes": [12]}, "outside 0..9"), ({"classes": [1.0]}, "neither a class id"),
    ({"classes": []}, "class list is empty"), ({"loops": 0}, "loops must be a loop count"),
    ({"loops": 40}, "loop count 40 is above 16"), ({"loops": "ramp:0:2"}, "bad loop schedule"),
    ({"loops": 2, "adaptive": 0.1}, "give one"), ({"budget_gflops": float("nan")}, "budget_gflops must be a finite"),
    ({"budget_ms": -1.0}, "budget_ms must be a finite"),
])
def test_python_api_checks_every_value_with_the_cli_messages(masked_run, kwargs, needle):
    model = elt.load(masked_run)
    with pytest.raises(ValueError, match=re.escape(needle)):
        model.generate(**kwargs)


def test_load_refuses_what_is_not_a_model(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder nor an exported model"):
        elt.load(tmp_path / "mine")
    with pytest.raises(ValueError, match="backend 'tensorrt' is not one elt has"):
        elt.load(tmp_path / "mine", backend="tensorrt")


def _card_rows(card_text: str) -> dict:
    rows = {}
    for line in card_text.splitlines():
        m = re.match(r"\| (\d+) \| (.+) \|$", line)
        if m:
            rows[m.group(1)] = [float(c) for c in m.group(2).split(" | ")]
    return rows


def test_export_is_a_hub_model_folder_whose_card_holds_the_report(evaluated, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from hub_standin import HubStandIn

    out = tmp_path / "export"
    assert main(["--quiet", "export", "--run", str(evaluated), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md", "anytime.json",
                                               "anytime.png"}
    meta = json.loads((out / "config.json").read_text())
    assert meta["library_name"] == "elt" and meta["weights"] == "ema" and meta["checkpoint_step"] == 4
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["example_shape"] == [8, 8, 1]
    card = ModelCard.load(out / "README.md")  # huggingface_hub's own parsing
    assert card.data.library_name == "elt" and card.data.license == "apache-2.0"
    assert "arxiv:2604.09168" in card.data.tags and card.data.model_name == meta["config"]["name"]
    assert HubStandIn.card_errors(card.content) == []  # the Hub's metadata rules
    report = json.loads((evaluated / "anytime.json").read_text())
    assert json.loads((out / "anytime.json").read_text()) == report
    rows, keys = _card_rows(card.text), ["acc_digits_cnn", "fd_digits_cnn", "seconds_per_sample", "gflops_per_sample"]
    assert list(rows) == list(report["loops"])  # the table holds every L of the report, and its numbers
    for L, cells in rows.items():
        for got, key in zip(cells, keys):
            assert got == pytest.approx(report["loops"][L][key], abs=5e-4 if key != "seconds_per_sample" else 5e-5), key
    assert "elt.load(" in card.text and "model.generate(" in card.text
    assert main(["--quiet", "export", "--run", str(evaluated), "--out", str(out)]) == 2  # never replaced unasked
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["--quiet", "export", "--run", str(evaluated), "--out", str(out), "--overwrite", "--no-ema"]) == 0
    assert json.loads((out / "config.json").read_text())["weights"] == "raw"
    assert main(["--quiet", "export", "--run", str(evaluated), "--out", str(evaluated / "inside")]) == 2
    assert "inside the run folder" in capsys.readouterr().err


@pytest.mark.parametrize("shared", ["masked_run", "diffusion_run", "video_run"])
def test_an_exported_folder_samples_as_its_run(shared, request, tmp_path):
    """`elt export` then `elt.load(DIR).generate(...)` gives `elt sample --run RUN`'s samples, bit for bit; once
    in a new process (the masked run)."""
    run = request.getfixturevalue(shared)
    out = tmp_path / "export"
    assert main(["--quiet", "export", "--run", str(run), "--out", str(out)]) == 0
    want = _sampled(tmp_path, run, "--loops", "2", "--n", "6", "--seed", "4")
    if shared == "masked_run":
        code = (f"import numpy as np, elt; np.save({str(tmp_path / 'got.npy')!r}, "
                f"elt.load({str(out)!r}).generate(n=6, loops=2, seed=4))")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
        got = np.load(tmp_path / "got.npy")
    else:
        got = elt.load(out).generate(n=6, loops=2, seed=4)
    assert np.array_equal(got, want)
    assert np.array_equal(_sampled(tmp_path, out, "--loops", "2", "--n", "6", "--seed", "4"), want)  # --run DIR too
    with pytest.raises(ValueError, match="holds the EMA weights only"):
        elt.load(out, ema=False)
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors; export the run again"):
        elt.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("shared,loops", [("masked_run", "1,2"), ("diffusion_run", "2")])
def test_onnx_graph_per_loop_count_agrees_with_pytorch_and_samples_alike(shared, loops, request, tmp_path, capsys):
    import onnxruntime as ort

    from elt.apps.export import onnx_inputs

    run = request.getfixturevalue(shared)
    out = tmp_path / "export"
    assert main(["--quiet", "export", "--run", str(run), "--out", str(out), "--format", "onnx", "--loops", loops]) == 0
    meta = json.loads((out / "config.json").read_text())["onnx"]
    assert meta["loops"] == [int(L) for L in loops.split(",")]
    model = elt.load(out)
    for L in meta["loops"]:  # new random inputs, a batch size the export did not see
        names, inputs = onnx_inputs(model.run, batch=5, seed=7)
        session = ort.InferenceSession(str(out / meta["files"][str(L)]), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
        with torch.no_grad():
            kw = {"positions": inputs[2]} if len(names) == 3 and names[2] == "positions" else {}
            want = model.run.model(*(inputs[:2] if kw else inputs), loops=L, **kw).numpy()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    L = meta["loops"][-1]
    torch_images = model.generate(n=8, loops=L, seed=5)
    onnx_images = elt.load(out, backend="onnxruntime").generate(n=8, loops=L, seed=5)
    assert onnx_images.shape == torch_images.shape
    assert np.abs(onnx_images.astype(int) - torch_images.astype(int)).mean() < 1.0  # the same samples, up to rounding
    assert main(["--quiet", "sample", "--run", str(out), "--backend", "onnxruntime", "--loops", "3", "--n", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no ONNX graph for L=3" in capsys.readouterr().err
    assert main(["--quiet", "sample", "--run", str(run), "--backend", "onnxruntime", "--loops", "1", "--n", "2",
                 "--out", str(tmp_path / "y")]) == 2
    assert "holds no ONNX graphs" in capsys.readouterr().err


@pytest.mark.slow
def test_push_and_load_a_hub_id_through_a_local_stand_in(evaluated, tmp_path):
    """`elt push` uploads exactly the exported files; `elt.load("org/name")` downloads them into huggingface_hub's
    cache and loads them, and loads them again from the cache offline; offline without them, and pushing
    offline, fail in one line."""
    from hub_standin import HubStandIn

    export = tmp_path / "export"
    assert main(["--quiet", "export", "--run", str(evaluated), "--out", str(export)]) == 0
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}
    with HubStandIn() as hub:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token)
        push = subprocess.run([sys.executable, "-m", "elt", "--quiet", "push", "--run", str(evaluated), "--repo-id",
                               "me/digits-elt"], env=env, capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr[-2000:]
        files = hub.repos["me/digits-elt"]["files"]
        exported = {str(p.relative_to(export)): p.read_bytes() for p in export.rglob("*") if p.is_file()}
        assert set(files) == set(exported)
        for name, data in exported.items():  # the same files; the card's loading line names the repository
            if name == "README.md":
                assert files[name].decode() == data.decode().replace('elt.load("ORG/NAME")', 'elt.load("me/digits-elt")')
            else:
                assert files[name] == data, name
        load = ("import numpy as np, elt; m = elt.load('me/digits-elt'); print(m.run.path); "
                "print(m.generate(n=3, loops=2, seed=1).sum())")
        first = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-2000:]
        assert "hf-home/hub/models--me--digits-elt/snapshots/" in first.stdout
        assert any(path.endswith("/model.safetensors") for _, path in hub.requests)
    offline = {**env, "HF_HUB_OFFLINE": "1"}  # the stand-in is gone: the cache answers
    again = subprocess.run([sys.executable, "-c", load], env=offline, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr[-2000:]
    for argv, needle in ((["sample", "--run", "me/elsewhere", "--loops", "1", "--n", "2", "--out", str(tmp_path / "z")],
                          "out of reach (offline)"),
                         (["push", "--run", str(export), "--repo-id", "me/other"], "offline mode")):
        proc = subprocess.run([sys.executable, "-m", "elt", "--quiet", *argv], env=offline, capture_output=True,
                              text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
