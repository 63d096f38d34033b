"""What the tests share: one tiny configuration per framework, a tiny trained run of each (trained once per
session through `elt train`, read by every test that only samples, serves or evaluates it — a test that
writes into a run works on its own copy), tiny networks, and an isolated cache."""
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

# One tiny configuration: digits (8×8, embedded), a width-32 network, a few steps of everything.
TINY = ["model.width=32", "model.heads=2", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=2",
        "eval.n=20", "eval.classifier_epochs=1", "sample.steps=4", "sample.batch_size=50"]
# Moving Fashion-MNIST clips at the demo's geometry (9 frames of 36×36), 64 of them.
VIDEO_TINY = ["data.clips=64", "data.label=class", "tokenizer.steps=4", "tokenizer.codebook_size=32",
              "tokenizer.hidden=16", "model.width=32", "model.heads=2", "train.batch_size=8", "train.warmup_steps=1",
              "train.compile=false", "sample.steps=3", "sample.batch_size=20", "eval.n=10",
              "eval.classifier_epochs=0.02", "eval.ref_clips=100"]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
RUN_STEPS = 4  # the shared runs' training steps


def sets(overrides) -> list[str]:
    """`--set` arguments for a list of `section.key=value` overrides."""
    return sum((["--set", s] for s in overrides), [])


def tiny_cfg(steps=6, extra=(), preset="digits-maskgit"):
    """The tiny configuration of `preset` (validated), trained for `steps`."""
    from elt.config import apply_overrides
    from elt.presets import get_preset

    return apply_overrides(get_preset(preset), TINY + [f"train.steps={steps}", *extra]).validate()


def pytest_collection_modifyitems(config, items):
    """Order for parallel workers (`make test` runs pytest-xdist, `--dist worksteal`: worker k starts on the
    k-th contiguous share of this list): the long tests (marked `slow`) dealt out round-robin, each at the
    front of its share, so every worker starts with long tests and none is left alone with one at the end."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow")]
    fast = [item for item in items if not item.get_closest_marker("slow")]
    items[:] = [it for k in range(workers) for it in slow[k::workers] + fast[k * len(fast) // workers:
                                                                              (k + 1) * len(fast) // workers]]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tokenizers and metric classifiers trained by tests go to a temporary cache of this session (set
    before the session's shared runs train), one for all parallel workers: entries are written atomically."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ELT_CACHE_DIR", str(root / "elt-cache"))
        yield


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _tree(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != ".elt.lock"}


def shared_run(tmp_path_factory, name: str, train):
    """A run trained by `train(run_folder)` once for all parallel workers (under a file lock), handed out;
    checks at the end that no test wrote into it. For session-scoped fixtures: `yield from shared_run(...)`."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    run = root / f"shared-{name}" / "run"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (run / "checkpoints" / "last").is_dir():
            run.parent.mkdir(parents=True, exist_ok=True)
            train(run)
    before = _tree(run)
    yield run
    changed = sorted(k for k in before.keys() | _tree(run).keys() if before.get(k) != _tree(run).get(k))
    assert not changed, f"a test wrote into the shared {name} run ({changed}); give it a copy (run_copy)"


def _shared_run(tmp_path_factory, name: str, preset: str, overrides: list[str]):
    """`elt train` of `preset` for RUN_STEPS steps with `overrides`, as a shared run."""
    from elt.apps.cli import main

    def train(run: Path) -> None:
        assert main(["--quiet", "train", "--config", preset, "--out", str(run), "--steps", str(RUN_STEPS),
                     *sets(overrides)]) == 0
    yield from shared_run(tmp_path_factory, name, train)


@pytest.fixture(scope="session")
def masked_run(tmp_path_factory) -> Path:
    """digits-maskgit (2N×4L) at the tiny configuration, trained once per session. Read-only: copy it
    (`run_copy`) to write into it."""
    yield from _shared_run(tmp_path_factory, "masked", "digits-maskgit", TINY)


@pytest.fixture(scope="session")
def diffusion_run(tmp_path_factory) -> Path:
    """digits-dit (2N×4L, pixel space) at the tiny configuration, trained once per session. Read-only."""
    yield from _shared_run(tmp_path_factory, "diffusion", "digits-dit", TINY)


@pytest.fixture(scope="session")
def video_run(tmp_path_factory) -> Path:
    """mfmnist-video (the layered window + motion tokenizer) on 64 tiny clips, trained once per session. Read-only."""
    if not FMNIST.is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (make setup installs it)")
    yield from _shared_run(tmp_path_factory, "video", "mfmnist-video", VIDEO_TINY)


@pytest.fixture
def run_copy(tmp_path):
    """A writable copy of a shared run: `run_copy(masked_run)` → tmp_path/run."""
    def copy(run: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(run, tmp_path / name))
    return copy


def tiny_masked(unique_layers=2, width=32, heads=4, codebook=11, tokens=9, classes=3, dropout=0.0, arch="prenorm"):
    from elt.masked import MaskedTransformer

    torch.manual_seed(0)
    return MaskedTransformer(codebook, tokens, classes, width, heads, unique_layers, 4.0, dropout, arch=arch).eval()


def tiny_dit(unique_layers=2, width=32, heads=4, size=8, channels=2, patch=2, classes=3, perturb=True):
    """A small looped DiT. `perturb`: give the zero-initialised adaLN-Zero and final layers random
    values, so blocks are not the identity and outputs are not zero (invariant tests need that)."""
    from elt.diffusion import DiT

    torch.manual_seed(0)
    model = DiT(size, channels, classes, patch, width, heads, unique_layers)
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "ada" in name or "final" in name:
                    p.normal_(0, 0.05)
    return model.eval()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a service or torchrun a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
