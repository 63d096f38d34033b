import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tokenizers and metric classifiers trained by tests go to a per-session temporary cache."""
    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "elt-cache"))
    torch.manual_seed(0)


def tiny_masked(unique_layers=2, width=32, heads=4, codebook=11, tokens=9, classes=3, dropout=0.0, arch="prenorm"):
    from elt.masked import MaskedTransformer

    torch.manual_seed(0)
    return MaskedTransformer(codebook, tokens, classes, width, heads, unique_layers, 4.0, dropout, arch=arch).eval()


os.environ.setdefault("MPLBACKEND", "Agg")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a service or torchrun a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
