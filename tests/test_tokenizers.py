import numpy as np
import pytest
import torch

from elt.data import ImageData, load_data
from elt.engine.prepare import InMemory, Split, encode, get_tokenizer
from elt.tokenizers import VQVAE, PixelTokenizer, train_vqvae
from elt.utils.arrays import to_float


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_tokenizer_trains_on_a_device_and_comes_back_on_the_cpu(device, tmp_path, monkeypatch):
    """The 3D VQ (error-weighted code restarts drawn from the CPU generator) trained on `device`: on the
    CPU exactly the weights of the default call; on any device the model returns to the CPU. The data
    set's encoding on `device` gives the CPU's token ids, on the CPU, and leaves the model there."""
    clips = np.random.default_rng(0).integers(0, 256, (64, 8, 16, 16, 1), dtype=np.uint8)

    def fit(**device):
        torch.manual_seed(0)
        vq = VQVAE(16, 1, 16, 4, 8, downsample_stages=2, frames=8, temporal_stages=1)
        return train_vqvae(vq, clips, steps=6, batch_size=8, progress=False, **device)
    trained = fit(device=device)
    assert all(v.device.type == "cpu" for v in trained.state_dict().values())
    assert trained.encode(to_float(clips[:2])).shape == (2, 4 * 4 * 4)
    if device == "cpu":
        default = fit().state_dict()
        assert all(torch.equal(v, default[k]) for k, v in trained.state_dict().items())
    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path))
    data = ImageData(clips, np.zeros(len(clips), np.int64), ["a"])
    ids = encode(trained, InMemory(data, f"test-clips-{device}"), device=device)
    assert ids.device.type == "cpu" and all(p.device.type == "cpu" for p in trained.parameters())
    assert (ids == trained.encode(to_float(clips))).float().mean() > 0.99  # equal but for float ties


def test_pixel_space_pads_scales_and_crops_back_exactly():
    from elt.tokenizers import PixelSpace

    codec = PixelSpace(28, 1, pad_to=32)
    x = torch.rand(3, 1, 28, 28)
    z = codec.encode(x)
    assert z.shape == (3, 1, 32, 32) and codec.latent_shape == (1, 32, 32)
    assert z.min() >= -1 and z.max() <= 1 and torch.all(z[:, :, :2] == -1)  # padding is black
    assert torch.allclose(codec.decode(z), x, atol=1e-6)


def test_klvae_trains_and_its_latents_have_unit_scale():
    from elt.tokenizers import KLVAE, train_klvae

    data = load_data("digits", "train")
    images = np.repeat(np.repeat(data.images, 2, 1), 2, 2)  # 16×16
    vae = KLVAE(16, 1, latent_dim=4, hidden=16, downsample_stages=2)
    x = to_float(images[:256])
    before = (vae.decode(vae.encode(x)) - x).pow(2).mean().item()
    train_klvae(vae, images, steps=150, batch_size=64, lr=3e-3, progress=False)
    z = vae.encode(x)
    assert z.shape == (256, 4, 4, 4) and vae.latent_shape == (4, 4, 4)
    assert 0.7 < z.std().item() < 1.3  # scaled by 1/std of the training latents, as SD's 0.18215
    after = (vae.decode(z) - x).pow(2).mean().item()
    assert after < 0.5 * before


def _tiny_autoencoder_kl():
    diffusers = __import__("pytest").importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                   latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16)


def test_diffusers_autoencoder_kl_from_a_local_folder(tmp_path):
    """A tiny AutoencoderKL built from a config (no download), saved, and loaded by path as a codec."""
    from elt.tokenizers import DiffusersVAE

    vae = _tiny_autoencoder_kl()
    vae.save_pretrained(tmp_path / "vae")
    codec = DiffusersVAE(str(tmp_path / "vae"), image_size=16, channels=3)
    assert codec.latent_shape == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16)
    z = codec.encode(x)
    assert z.shape == (2, 4, 8, 8)
    expected = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(z, expected, atol=1e-5)
    out = codec.decode(z)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_missing_diffusers_vae_folder_is_a_clear_error(tmp_path):
    import pytest

    from elt.tokenizers import DiffusersVAE

    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="not a diffusers AutoencoderKL folder"):
        DiffusersVAE(str(tmp_path / "nothing"), image_size=16)


def _tiny_maskgit(tmp_path, suffix=".safetensors"):
    from safetensors.torch import save_file

    from elt.tokenizers.maskgit_vqgan import MaskGITVQGAN

    torch.manual_seed(0)
    net = MaskGITVQGAN(image_size=16, hidden=32, mult=(1, 2, 2), blocks=1, z=8, codebook_size=24)
    path = tmp_path / f"vqgan{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return net.eval(), path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_maskgit_vqgan_port_loads_its_checkpoint_layout(tmp_path, suffix):
    """A small random MaskGIT VQGAN: open-muse's state-dict names, architecture read off the file,
    exact reload, token grid 4× smaller per level, decode → encode shapes and range."""
    from elt.tokenizers.maskgit_vqgan import MaskGITVQGAN, architecture

    net, path = _tiny_maskgit(tmp_path, suffix)
    keys = net.state_dict().keys()
    for k in ("encoder.down.0.block.0.norm1.weight", "encoder.down.1.block.0.nin_shortcut.weight",
              "decoder.up.1.upsample_conv.weight", "decoder.mid.0.conv2.weight", "quantize.embedding.weight"):
        assert k in keys
    assert architecture(net.state_dict()) == {"channels": 3, "hidden": 32, "mult": (1, 2, 2), "blocks": 1, "z": 8,
                                              "codebook_size": 24}
    loaded = MaskGITVQGAN.from_file(str(path), image_size=16)
    x = torch.rand(3, 3, 16, 16)
    ids = loaded.encode(x)
    assert ids.shape == (3, 16) and loaded.grid == (4, 4) and int(ids.max()) < 24
    torch.testing.assert_close(ids, net.encode(x), rtol=0, atol=0)
    y = loaded.decode(ids)
    assert y.shape == (3, 3, 16, 16) and float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(y, net.decode(ids))
    torch.testing.assert_close(loaded.encode(x[1:2]), ids[1:2], rtol=0, atol=0)  # batch = single


def test_maskgit_vqgan_bad_files_are_clear_errors(tmp_path):
    from elt.tokenizers.maskgit_vqgan import MaskGITVQGAN

    _, path = _tiny_maskgit(tmp_path)
    with pytest.raises(ValueError, match="SHA-256"):
        MaskGITVQGAN.from_file(str(path), sha256="1" * 64, image_size=16)
    with pytest.raises(FileNotFoundError, match="not found"):
        MaskGITVQGAN.from_file(str(tmp_path / "nope.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a MaskGIT VQGAN checkpoint"):
        MaskGITVQGAN.from_file(str(junk))


def test_diverged_tokenizer_training_stops_with_a_clear_error():
    from elt.tokenizers.vqvae import train_autoencoder

    class Diverges(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def loss(self, batch, generator=None):
            loss = (batch.mean() * self.w) * (float("nan") if self.w.grad is not None else 1.0)
            return loss, loss.detach()

    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(FloatingPointError, match="diverged at step 1.*tokenizer.lr"):
        train_autoencoder(Diverges(), images, steps=5, batch_size=2, progress=False)


def test_cached_tokenizer_does_not_depend_on_earlier_draws(tmp_path, monkeypatch):
    """`elt demo` trains the tokenizer before anything else draws, `elt train` after seeding the model:
    both must train (and cache under one key) the same weights."""
    from elt.config import apply_overrides
    from elt.presets import get_preset

    cfg = apply_overrides(get_preset("digits-maskgit"), [
        "tokenizer.kind=vqvae", "tokenizer.codebook_size=16", "tokenizer.latent_dim=4", "tokenizer.hidden=8",
        "tokenizer.downsample_stages=1", "tokenizer.steps=3", "tokenizer.batch_size=16"]).validate()
    data = Split("digits", "train")
    weights = []
    for draw in (1, 2):
        monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path / str(draw)))
        torch.manual_seed(draw)
        torch.rand(draw)
        weights.append(get_tokenizer(cfg, data, seed=0, progress=False, device=torch.device("cpu")).state_dict())
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())
