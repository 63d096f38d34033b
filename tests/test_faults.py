"""Bad input and faults: every case ends with one line on stderr naming the problem and a safe fix (no
traceback) and the right exit code, and leaves every file that existed before as it was — or gives a
correct result. `python tests/test_faults.py --table` prints docs/engine.md's bad-input table from these
same cases, so the table cannot drift from the code.

Disk-full and read-only cases use a small tmpfs and a read-only bind mount where this process may mount
(root, as in CI here); elsewhere they use a patched writer and chmod."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY  # noqa: E402

from elt.apps.cli import main  # noqa: E402


# ----------------------------------------------------------------------------------- machinery


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".elt.lock"}


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `elt ARGV` in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(["--quiet", *argv])
        except SystemExit as e:  # argparse's own checks exit while parsing
            code = e.code
    return code, err.getvalue()


@dataclass
class Case:
    name: str                   # what goes wrong
    argv: list[str]             # the command, with {run} and {tmp} filled in
    code: int                   # the exit code
    needle: str                 # a phrase the one line must hold
    setup: object = None        # setup(tmp, run) before the command: writes files, patches, returns a cleanup
    changes: tuple = ()         # files the command may change (relative to tmp)
    after: object = None        # after(tmp, run): extra checks of a correct result
    tags: tuple = field(default_factory=tuple)


def _fill(argv, tmp, run):
    return [a.replace("{run}", str(run)).replace("{tmp}", str(tmp)) for a in argv]


def play(case: Case, tmp: Path, run: Path) -> tuple[int, list[str]]:
    cleanup = case.setup(tmp, run) if case.setup else None
    try:
        before = tree_hashes(tmp)
        code, err = run_cli(_fill(case.argv, tmp, run))
        after = tree_hashes(tmp)
    finally:
        if callable(cleanup):
            cleanup()
    changed = [k for k, v in before.items() if after.get(k) != v and k not in case.changes]
    assert not changed, f"files that existed before changed: {changed}"
    return code, [line for line in err.strip().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------- set-ups


def _write(rel: str, text: str):
    def setup(tmp, run):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return setup


def _sampled(tmp, run):
    assert main(["--quiet", "sample", "--run", str(run), "--loops", "1", "--n", "10", "--out", str(tmp / "s")]) == 0


def _held_lock(tmp, run):
    from elt.engine.run import RunLock
    lock = RunLock(run, "elt train (another)").acquire()
    return lock.release


def _killed_before_checkpoint(tmp, run):
    out = tmp / "killed"
    out.mkdir()
    shutil.copy(run / "config.yaml", out / "config.yaml")
    (out / ".elt.lock").write_text("pid 1: elt train\n")  # what the killed process left
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 9.0}\n{"step": 4, "loss": 8.0}\n')


def _user_folder(tmp, run):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "config.yaml").write_text("my own notes\n")
    (tmp / "mine" / "metrics.jsonl").write_text("mine\n")


def _full_disk(tmp, run):
    """A 3 MB tmpfs holding a copy of the run (root may mount), else a writer that fails with ENOSPC."""
    small = tmp / "small"
    small.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        import elt.engine.checkpoint as ck
        real = ck.save_file

        def full(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        ck.save_file = full
        shutil.copytree(run, small / "run")
        return lambda: setattr(ck, "save_file", real)
    shutil.copytree(run, small / "run")
    free = shutil.disk_usage(small).free
    (small / "filler").write_bytes(b"\0" * max(0, free - 200_000))  # leave less than a checkpoint needs

    def unmount():
        subprocess.run(["umount", str(small)], capture_output=True)
    return unmount


def _read_only_run(tmp, run):
    """The run behind a read-only bind mount (root), else chmod'ed read-only."""
    ro = tmp / "ro"
    ro.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(run), str(ro)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        return lambda: subprocess.run(["umount", str(ro)], capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        ro.rmdir()
        shutil.copytree(run, ro)
        for p in [ro, *ro.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return lambda: [p.chmod(0o755) for p in [ro, *ro.rglob("*")] if p.is_dir()]


def _edited_config(tmp, run):
    text = (run / "config.yaml").read_text().replace("width: 32", "width: 64")
    (run / "config.yaml").write_text(text)


def _corrupt_optimizer(tmp, run):
    (run / "checkpoints" / "last" / "optimizer.pt").write_bytes(b"not a torch file")


def _edited_lr(tmp, run):
    import yaml
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["lr"] *= 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _no_kept_copies(tmp, run):
    (run / "checkpoints" / "last" / "state.json").write_text("{not json")


def _bad_yaml(tmp, run):
    (tmp / "bad.yaml").write_text("model:\n  width: 32\n  heads: [2\ntrain:\n  steps: 4\n")


def _not_weights(tmp, run):
    (tmp / "notes.pth").write_bytes(b"these are notes, not weights\n" * 10)
    from elt.engine.media import export_adm_npz
    import numpy as np
    export_adm_npz(np.zeros((2, 8, 8, 3), np.uint8), tmp / "a.npz")


def _exported(tmp, run, drop: str | None = None):
    assert main(["--quiet", "export", "--run", str(run), "--out", str(tmp / "export")]) == 0
    if drop:
        (tmp / "export" / drop).unlink()


def _offline_hub(tmp, run):
    import huggingface_hub.constants as hub
    before, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
    os.environ["HF_HOME"], home = str(tmp / "hf-home"), os.environ.get("HF_HOME")

    def restore():
        hub.HF_HUB_OFFLINE = before
        os.environ.pop("HF_HOME") if home is None else os.environ.__setitem__("HF_HOME", home)
    return restore


def _empty_class(tmp, run):
    from PIL import Image
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp / "imgs" / split / c
            d.mkdir(parents=True)
            if not (split == "train" and c == "b"):
                Image.new("RGB", (8, 8)).save(d / "x.png")


def _port_in_use(tmp, run):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    (tmp / "port").write_text(str(s.getsockname()[1]))
    return s.close


# ----------------------------------------------------------------------------------- the cases

SAMPLE = ["sample", "--run", "{run}", "--loops", "1", "--n", "4"]
TRAIN = ["train", "--config", "digits-maskgit", *sum((["--set", s] for s in TINY), [])]

CASES = [
    # lost or overwritten data
    Case("sample over an existing output", SAMPLE + ["--out", "{tmp}/s"], 2, "exists; choose another output name",
         _sampled),
    Case("sample onto the run's own plot", SAMPLE + ["--out", "{run}/anytime"], 2, "own files (anytime.png)",
         _write("run/anytime.png", "the evaluation's plot")),
    Case("sample onto the run's own plot, --overwrite", SAMPLE + ["--out", "{run}/anytime", "--overwrite"], 2,
         "even with --overwrite", _write("run/anytime.png", "the evaluation's plot")),
    Case("samples inside the run's checkpoint", SAMPLE + ["--out", "{run}/checkpoints/last/s"], 2,
         "own files (checkpoints/…)"),
    Case("--resume after editing config.yaml (lr)", ["train", "--config", "{run}/config.yaml", "--out", "{run}",
                                                     "--resume", "--steps", "8"], 2,
         "differs from the config its checkpoint was trained with in train.lr", _edited_lr,
         changes=("run/config.yaml",)),
    Case("a second writer on a run folder", TRAIN + ["--out", "{run}", "--resume", "--steps", "8"], 2,
         "in use by another elt process (pid", _held_lock),
    Case("every step non-finite (lr inf)", TRAIN + ["--out", "{tmp}/r", "--set", "train.lr=inf"], 2, "train.lr"),
    Case("--resume with no more steps", TRAIN + ["--out", "{run}", "--resume", "--steps", "2"], 2,
         "adds nothing"),
    Case("--out at a folder that is not a run", TRAIN + ["--out", "{tmp}/mine"], 2, "not an elt run", _user_folder),
    Case("disk full while checkpointing", TRAIN + ["--out", "{tmp}/small/run", "--resume", "--steps", "8"], 1,
         "could not write the checkpoint", _full_disk, changes=("small/run/metrics.jsonl",)),
    # exit 0 with garbage before
    Case("guidance nan", SAMPLE + ["--out", "{tmp}/g", "--guidance", "nan"], 2, "--guidance"),
    Case("guidance inf", SAMPLE + ["--out", "{tmp}/g", "--guidance", "inf"], 2, "--guidance"),
    Case("guidance 1e308 (sample)", SAMPLE + ["--out", "{tmp}/g", "--guidance", "1e308"], 2,
         "--guidance: must be a number in 0..1000"),
    Case("guidance 1e308 (evaluate)", ["evaluate", "--run", "{run}", "--guidance", "1e308"], 2,
         "--guidance: must be a number in 0..1000"),
    Case("negative min_lr_ratio", TRAIN + ["--out", "{tmp}/r", "--set", "train.min_lr_ratio=-1"], 2,
         "train.min_lr_ratio"),
    Case("negative weight decay", TRAIN + ["--out", "{tmp}/r", "--set", "train.weight_decay=-1"], 2,
         "train.weight_decay"),
    Case("an empty YAML file", ["train", "--config", "{tmp}/empty.yaml", "--out", "{tmp}/r"], 2, "is empty",
         _write("empty.yaml", "")),
    Case("an empty class folder", ["train", "--config", "digits-maskgit", "--set", "data.dataset=folder", "--set",
                                   "data.image_size=8", "--data-dir", "{tmp}/imgs", "--out", "{tmp}/r"], 2,
         "holds no images", _empty_class),
    Case("extract with a training flag", ["extract", "--config", "digits-maskgit", "--out", "{tmp}/x", "--steps",
                                          "3"], 2, "unrecognized arguments: --steps"),
    # tracebacks before
    Case("negative MLP ratio", TRAIN + ["--out", "{tmp}/r", "--set", "model.mlp_ratio=-1"], 2, "model.mlp_ratio"),
    Case("a width that cannot be allocated", TRAIN + ["--out", "{tmp}/r", "--set", "model.width=200000", "--set",
                                                      "model.heads=8"], 2, "lower model.width"),
    Case("an empty --out", SAMPLE + ["--out", ""], 2, "--out is empty"),
    Case("a name over 255 characters", SAMPLE + ["--out", "{tmp}/" + "x" * 300], 2, "characters long"),
    Case("--folder at a file", SAMPLE + ["--folder", "{tmp}/afile"], 2, "is a file", _write("afile", "x")),
    Case("extract --device bogus", ["extract", "--config", "digits-maskgit", "--out", "{tmp}/x", "--device",
                                    "bogus"], 2, "invalid choice: 'bogus'"),
    Case("an unwritable cache folder", ["train", "--config", "digits-dit", "--set", "tokenizer.kind=klvae", "--out",
                                        "{tmp}/r", *sum((["--set", s] for s in TINY), [])], 2,
         "set ELT_CACHE_DIR to a writable folder", tags=("cache",)),
    Case("serve on port 99999", ["serve", "--run", "{run}", "--port", "99999"], 2, "--port must be in 1..65535"),
    Case("serve on a port in use", ["serve", "--run", "{run}", "--port", "{port}"], 2, "cannot listen on",
         _port_in_use, tags=("port",)),
    # misleading before
    Case("an edited config.yaml", SAMPLE + ["--out", "{tmp}/s"], 2, "was config.yaml edited", _edited_config,
         changes=("run/config.yaml",)),
    Case("a corrupt optimizer.pt", TRAIN + ["--out", "{run}", "--resume", "--steps", "8"], 2,
         "optimizer.pt is unreadable (", _corrupt_optimizer, changes=("run/checkpoints/last/optimizer.pt",)),
    Case("train.beta1=2", TRAIN + ["--out", "{tmp}/r", "--set", "train.beta1=2"], 2, "train.beta1"),
    Case("a huge --seed", SAMPLE + ["--out", "{tmp}/s", "--seed", str(2 ** 70)], 2, "--seed"),
    Case("data.image_size=-8", TRAIN + ["--out", "{tmp}/r", "--set", "data.image_size=-8"], 2, "data.image_size"),
    Case("evaluate --n 1", ["evaluate", "--run", "{run}", "--n", "1"], 2, "--n must be >= 2"),
    Case("evaluating a read-only run", ["evaluate", "--run", "{tmp}/ro", "--loops", "1"], 2, "cannot write to run "
         "folder", _read_only_run),
    # a model outside its run folder
    Case("--run at a folder that is neither a run nor an export", SAMPLE + ["--out", "{tmp}/s", "--run", "{tmp}/mine"],
         2, "is not a run folder nor an exported model", _write("mine/notes.txt", "mine")),
    Case("an export without its weights", SAMPLE[:1] + ["--run", "{tmp}/export"] + SAMPLE[3:] + ["--out", "{tmp}/s"],
         2, "has no model.safetensors; export the run again", lambda tmp, run: _exported(tmp, run, "model.safetensors")),
    Case("an ONNX backend on an export without graphs", SAMPLE[:1] + ["--run", "{tmp}/export", "--backend",
                                                                      "onnxruntime"] + SAMPLE[3:] + ["--out", "{tmp}/s"],
         2, "holds no ONNX graphs; write them with `elt export", _exported),
    Case("an unknown backend", SAMPLE + ["--out", "{tmp}/s", "--backend", "tensorrt"], 2,
         "invalid choice: 'tensorrt'"),
    Case("an offline Hub id", SAMPLE[:1] + ["--run", "me/not-cached"] + SAMPLE[3:] + ["--out", "{tmp}/s"], 2,
         "the Hugging Face Hub is out of reach (offline)", _offline_hub),
    # messages
    Case("a YAML error", ["train", "--config", "{tmp}/bad.yaml", "--out", "{tmp}/r"], 2,
         "is not valid YAML at line 4, column 6", _bad_yaml),
    Case("an output folder that is a file", SAMPLE + ["--out", "{tmp}/afile/s"], 2, "afile is a file, not a folder",
         _write("afile", "x")),
    Case("extract --out at a file", ["extract", "--config", "digits-maskgit", "--out", "{tmp}/afile"], 2,
         "is a file; give a folder", _write("afile", "x")),
    Case("a NaN budget", SAMPLE[:3] + ["--budget-gflops", "nan", "--n", "4", "--out", "{tmp}/s"], 2,
         "--budget-gflops: must be a finite number > 0"),
    Case("a negative budget", SAMPLE[:3] + ["--budget-gflops", "-1", "--n", "4", "--out", "{tmp}/s"], 2,
         "--budget-gflops: must be a finite number > 0"),
    Case("--budget-ms 0", SAMPLE[:3] + ["--budget-ms", "0", "--n", "4", "--out", "{tmp}/s"], 2,
         "--budget-ms: must be a finite number > 0"),
    Case("decoding steps above the token count", SAMPLE + ["--out", "{tmp}/s", "--steps", "65"], 2,
         "65 decoding steps (--steps, sample.steps) are more than the 64 tokens"),
    Case("a damaged checkpoint, no kept copies", SAMPLE + ["--out", "{tmp}/s"], 2, "keeps no step_N copies",
         _no_kept_copies, changes=("run/checkpoints/last/state.json",)),
    Case("train.ema for train.ema_decay", TRAIN + ["--out", "{tmp}/r", "--set", "train.ema=0.9"], 2,
         "did you mean 'ema_decay'"),
    Case("a file that is not Inception weights", ["fid", "--samples", "{tmp}/a.npz", "--ref", "{tmp}/a.npz",
                                                  "--inception", "{tmp}/notes.pth"],
         2, "is not the FID Inception state dict", _not_weights),
    # the sampling frontier
    Case("guidance loops above the loops", SAMPLE + ["--out", "{tmp}/s", "--guidance-loops", "2"], 2,
         "--guidance-loops 2 is above the 1 loops of a sampling step"),
    Case("guidance loops 0", SAMPLE + ["--out", "{tmp}/s", "--guidance-loops", "0"], 2,
         "--guidance-loops: must be >= 1"),
    Case("a solver that does not exist", SAMPLE + ["--out", "{tmp}/s", "--sampler", "euler"], 2,
         "invalid choice: 'euler'"),
    Case("DPM-Solver++ on a masked run", SAMPLE + ["--out", "{tmp}/s", "--sampler", "dpmpp2m"], 2,
         "dpmpp2m is a diffusion solver"),
    Case("a frontier solver that does not exist", ["schedules", "--run", "{run}", "--solvers", "euler"], 2,
         "'euler' is not a solver elt has"),
    Case("ONNX loop counts with --format hub", ["export", "--run", "{run}", "--out", "{tmp}/e", "--loops", "1,2"], 2,
         "add --format onnx"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case, masked_run, run_copy, monkeypatch):
    run = run_copy(masked_run)
    tmp_path = run.parent
    if "cache" in case.tags:
        monkeypatch.setenv("ELT_CACHE_DIR", "/proc/elt-cache")
    if "port" in case.tags:
        def with_port(tmp, r, inner=case.setup):
            close = inner(tmp, r)
            case_argv[:] = [a.replace("{port}", (tmp / "port").read_text()) for a in case_argv]
            return close
        case_argv = list(case.argv)
        case = Case(case.name, case_argv, case.code, case.needle, with_port, case.changes, case.after, case.tags)
    code, lines = play(case, tmp_path, run)
    assert code == case.code, (code, lines)
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert case.needle in lines[0], lines[0]
    if not case.tags:  # docs/engine.md shows this very line (`python tests/test_faults.py --table` writes the table)
        assert docs_rows().get(case.name) == row(case, tmp_path, code, lines)


def test_disk_full_leaves_no_temporary_folder_and_the_checkpoint_intact(masked_run, run_copy, tmp_path):
    run = run_copy(masked_run)
    cleanup = _full_disk(tmp_path, run)
    try:
        small = tmp_path / "small" / "run"
        before = tree_hashes(small / "checkpoints")
        code, _ = run_cli(TRAIN + ["--out", str(small), "--resume", "--steps", "8"])
        assert code == 1
        assert not list((small / "checkpoints").glob("last.tmp*"))
        assert tree_hashes(small / "checkpoints") == before
        steps = [json.loads(x)["step"] for x in (small / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) < 8  # no record of the step whose checkpoint could not be written
    finally:
        cleanup()


def test_evaluate_keeps_the_schedule_search(masked_run, run_copy, tmp_path):
    run = run_copy(masked_run)
    common = ["--run", str(run), "--n", "10", "--steps", "3"]
    assert main(["--quiet", "schedules", *common, "--budgets", "2"]) == 0
    assert "schedules" in json.loads((run / "anytime.json").read_text())
    assert main(["--quiet", "evaluate", *common, "--loops", "1,2"]) == 0
    for path in (run / "anytime.json", *(run / "eval").glob("*.json")):
        report = json.loads(path.read_text())
        assert "schedules" in report and {"1", "2"} <= set(report["loops"]), path


def test_a_run_killed_before_its_first_checkpoint_starts_clean(masked_run, run_copy, tmp_path):
    run = run_copy(masked_run)
    _killed_before_checkpoint(tmp_path, run)
    out = tmp_path / "killed"
    assert main(["--quiet", *TRAIN, "--out", str(out), "--steps", "4"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one run's records, not two


def test_a_late_non_finite_step_keeps_the_last_good_weights(tmp_path, monkeypatch):
    """Skipped steps leave the weights as they were; a run whose every step is non-finite stops (exit 1) and
    writes no checkpoint."""
    import elt.engine.step as step_mod
    real = step_mod.forward_loss

    def nan_loss(*a, **k):
        loss, parts = real(*a, **k)
        return loss * float("nan"), {key: v * float("nan") for key, v in parts.items()}
    monkeypatch.setattr(step_mod, "forward_loss", nan_loss)
    code, err = run_cli(TRAIN + ["--out", str(tmp_path / "r"), "--steps", "3"])
    assert code == 1 and "no checkpoint was written" in err and len(err.strip().splitlines()) == 1


def test_folder_without_a_held_out_split_holds_one_image_in_ten_out(tmp_path):
    from PIL import Image

    from elt.data.folder import HELD_OUT, list_image_folder
    for c in ("a", "b"):
        d = tmp_path / "train" / c
        d.mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (8, 8)).save(d / f"{i:02d}.png")
    train, _ = list_image_folder(tmp_path, "train")
    test, _ = list_image_folder(tmp_path, "test")
    assert len(test) == 2 * 20 // HELD_OUT and len(train) == 40 - len(test)
    assert not {p for p, _ in train} & {p for p, _ in test}
    (tmp_path / "val" / "a").mkdir(parents=True)  # ImageNet's own layout: val/ is the held-out split
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "v.png")
    (tmp_path / "val" / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "b" / "v.png")
    test, _ = list_image_folder(tmp_path, "test")
    assert [p.name for p, _ in test] == ["v.png", "v.png"] and len(list_image_folder(tmp_path, "train")[0]) == 40


def test_a_long_sampling_job_says_how_long(caplog):
    from elt.engine.sampling import say_duration

    with caplog.at_level("INFO", logger="elt"):
        assert say_duration(10_000_000, 100, 2.0) == pytest.approx(200_000.0)
    assert "about 2.3 days" in caplog.text and caplog.records[-1].levelname == "WARNING"


def test_report_copies_merge_from_their_own_file(masked_run, run_copy):
    """Evaluate L=1, then L=2, then another setting (--no-ema), then L=3 at the first setting: its copy and
    anytime.json hold L = 1, 2, 3; the raw weights' copy keeps its own."""
    run = run_copy(masked_run)
    for extra in (["--loops", "1"], ["--loops", "2"], ["--loops", "1", "--no-ema"], ["--loops", "3"]):
        assert main(["--quiet", "evaluate", "--run", str(run), "--n", "10", *extra]) == 0
    report = json.loads((run / "anytime.json").read_text())
    assert list(report["loops"]) == ["1", "2", "3"] and report["sampling"]["ema"] is True
    copies = {p.stem: json.loads(p.read_text()) for p in (run / "eval").glob("*.json")}
    assert sorted(list(r["loops"]) for r in copies.values()) == [["1"], ["1", "2", "3"]]
    assert copies[report["tag"]] == report


def test_sample_folders_of_two_runs_of_one_name_never_mix(masked_run, tmp_path):
    """Two runs both called `run`, same checkpoint step and settings: two folders, each knowing its weights."""
    from conftest import tiny_cfg
    from elt.engine.train import train

    other = tmp_path / "b" / "run"
    train(tiny_cfg(4, ["train.seed=1"]), other, progress=False)
    args = ["--quiet", "sample", "--loops", "2", "--n", "6", "--folder", str(tmp_path / "s"), "--shard-size", "3"]
    assert main([*args, "--run", str(masked_run)]) == 0 and main([*args, "--run", str(other)]) == 0
    folders = sorted((tmp_path / "s").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("run_ckpt4_") for f in folders)
    made = {json.loads((f / "manifest.json").read_text())["settings"]["run"] for f in folders}
    assert made == {str(masked_run.absolute()), str(other.absolute())}
    with np.load(folders[0] / "samples.npz") as a, np.load(folders[1] / "samples.npz") as b:
        assert not np.array_equal(a["images"], b["images"])


def test_a_trailing_slash_means_a_folder(masked_run, tmp_path):
    (tmp_path / "o").mkdir()
    assert main(["--quiet", "sample", "--run", str(masked_run), "--loops", "1", "--n", "4", "--out",
                 f"{tmp_path / 'o'}/"]) == 0
    assert (tmp_path / "o" / "samples.npz").is_file() and not (tmp_path / "o.npz").exists()
    assert main(["--quiet", "sample", "--run", str(masked_run), "--loops", "1", "--n", "4", "--out",
                 str(tmp_path / "L1.5x")]) == 0  # a dot in the name is kept, not taken for a suffix
    assert (tmp_path / "L1.5x.npz").is_file() and (tmp_path / "L1.5x.png").is_file()


def test_held_out_images_never_train_however_few_a_class_has(tmp_path):
    from PIL import Image

    from elt.data.folder import list_image_folder
    for c, count in (("a", 3), ("b", 12)):
        d = tmp_path / "train" / c
        d.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(d / f"{i:02d}.png")
    train, _ = list_image_folder(tmp_path, "train")
    test, _ = list_image_folder(tmp_path, "test")
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert sorted(p.name for p, _ in test) == ["02.png", "09.png"] and len(train) == 3 + 12 - 2
    (tmp_path / "train" / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "c" / "only.png")
    with pytest.raises(ValueError, match="holds one image"):
        list_image_folder(tmp_path, "train")


def test_sigterm_exits_143_and_debug_keeps_the_exit_code(tmp_path):
    """The shell's conventions: 128 + the signal (143 for SIGTERM); --debug adds the traceback, not another code."""
    import signal
    import time

    from conftest import sets
    cmd = [sys.executable, "-m", "elt", "--quiet", "train", "--config", "digits-maskgit", "--out", str(tmp_path / "r"),
           *sets(TINY + ["train.steps=100000", "train.ckpt_every=100000"])]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "r" / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "SIGTERM at step" in err, err[-2000:]
    code, err = run_cli(["--debug", "sample", "--run", str(tmp_path / "missing"), "--loops", "1", "--n", "2", "--out",
                         str(tmp_path / "s")])
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("elt: error:")


def test_sample_captions_name_the_run_in_plain_words():
    from elt.engine.media import caption_text

    text = caption_text("digits-maskgit-2Nx4L (run), checkpoint step 4",
                        {"loops": "2", "budget_gflops": 0.5, "chosen": {"name": "L2", "gflops_per_sample": 0.25},
                         "guidance": 2.0, "ema": True})
    assert text == ("digits-maskgit-2Nx4L (run), checkpoint step 4: loops 2, budget_gflops 0.5, chosen name=L2 "
                    "gflops_per_sample=0.25, guidance 2, ema True")
    assert "{" not in text and "'" not in text


# ----------------------------------------------------------------------------------- the docs table


HEADER = ["| what goes wrong | command | exit | stderr (one line) |", "|---|---|---|---|"]


def row(case: Case, tmp: Path, code: int, lines: list[str]) -> str:
    """The docs table's row of a case as it ran in `tmp` (paths shown relative to it, pids as N)."""
    import re

    argv = [a for i, a in enumerate(case.argv) if a not in TINY and not (a == "--set" and i + 1 < len(case.argv)
                                                                        and case.argv[i + 1] in TINY)]
    shown = " ".join(_fill(argv, Path("."), Path("run"))).replace("./", "")
    shown = shown if len(shown) < 90 else shown[:87] + "…"
    line = lines[0].replace(str(tmp) + "/", "").replace(str(tmp), ".") if lines else ""
    line = re.sub(r"pid \d+", "pid N", line)  # what the machine has at the time, not what the case does
    line = re.sub(r"has [\d.,]+ GiB free", "has N GiB free", line)
    return f"| {case.name} | `elt {shown}` | {code} | {line.replace('|', '/')} |"


def docs_rows() -> dict[str, str]:
    """The rows of docs/engine.md's bad-input table, by case name."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "engine.md").read_text()
    start = text.index(HEADER[0])
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| "):
            break
        rows[line.split(" | ")[0][2:]] = line
    return rows


def test_the_docs_table_lists_every_case():
    assert list(docs_rows()) == [c.name for c in CASES if not c.tags]


def table(tmp_root: Path) -> str:
    """Run every case; the markdown table docs/engine.md shows."""
    run = tmp_root / "masked_run"
    assert main(["--quiet", *TRAIN, "--out", str(run), "--steps", "4"]) == 0
    rows = list(HEADER)
    for case in CASES:
        if case.tags:
            continue
        tmp = tmp_root / case.name.replace(" ", "_").replace("/", "_")
        tmp.mkdir()
        shutil.copytree(run, tmp / "run")
        with contextlib.redirect_stdout(io.StringIO()):
            code, lines = play(case, tmp, tmp / "run")
        rows.append(row(case, tmp, code, lines))
    return "\n".join(rows)


if __name__ == "__main__" and "--table" in sys.argv:
    import tempfile

    os.environ.setdefault("ELT_CACHE_DIR", tempfile.mkdtemp(prefix="elt-cache-"))
    with tempfile.TemporaryDirectory() as d:
        print(table(Path(d)))
