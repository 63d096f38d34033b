import numpy as np
import torch

from elt.data import load_data
from elt.tokenizers import VQVAE, PixelTokenizer, train_vqvae
from elt.tokenizers.vqvae import to_float


def test_pixel_tokenizer_round_trip_is_exact_on_digits():
    data = load_data("digits", "test")
    tok = PixelTokenizer(8, 1, 17)
    x = to_float(data.images)
    ids = tok.encode(x)
    assert ids.shape == (len(x), 64) and ids.min() >= 0 and ids.max() <= 16
    back = tok.decode(ids)
    assert torch.allclose((back * 255).round(), (x * 255).round(), atol=8)  # 17 levels: ≤ half a step
    assert torch.equal(tok.encode(back), ids)


def test_vqvae_shapes_and_grid():
    vq = VQVAE(28, 1, codebook_size=32, latent_dim=8, hidden=16, downsample_stages=2).eval()
    ids = vq.encode(torch.rand(3, 1, 28, 28))
    assert ids.shape == (3, 49) and ids.max() < 32
    assert vq.decode(ids).shape == (3, 1, 28, 28)
    assert VQVAE(32, 3, 16, 4, 16, downsample_stages=3).encode(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_vqvae_training_reduces_reconstruction_error():
    data = load_data("digits", "train")
    images = np.repeat(np.repeat(data.images, 2, axis=1), 2, axis=2)  # 16×16
    vq = VQVAE(16, 1, codebook_size=32, latent_dim=8, hidden=16, downsample_stages=2)
    x = to_float(images[:256])
    before = (vq.eval().decode(vq.encode(x)) - x).pow(2).mean()
    train_vqvae(vq, images, steps=150, batch_size=64, lr=3e-3, progress=False)
    after = (vq.decode(vq.encode(x)) - x).pow(2).mean()
    assert after < 0.5 * before
    used = vq.encode(x).unique().numel()
    assert used > 8  # dead-code restarts keep the codebook in use
