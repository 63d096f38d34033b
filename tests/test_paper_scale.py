"""Paper scale: the FID Inception network from a local file, the metric maths' identities,
streaming statistics, the ADM `.npz` export, and the ImageNet-layout pipeline end to end (extract →
train → sharded sampling → FID). Random weights stand in for the real Inception file, which cannot be
downloaded here."""
import numpy as np
import pytest
import scipy.linalg
import torch

from elt.engine.media import export_adm_npz
from elt.metrics.frechet import feature_stats, frechet_distance
from elt.metrics.inception import WEIGHTS_NAME, FIDInceptionV3, InceptionFeatures, fidelity_available, resize_bilinear_tf1
from elt.metrics.scores import StreamingStats, inception_score, precision_recall


def random_inception(path):
    """The FID Inception's architecture with random weights, saved as its state dict. He-initialised
    convolutions keep the activations' scale through its ~90 layers (torch's default init shrinks them
    until every image has the same features: FID 0 and IS 1 for any images, which no comparison tests)."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial BatchNorm statistics, so eval-mode BN matters
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return random_inception(tmp_path_factory.mktemp("inception") / "random-inception.pth")


def images(n, size=32, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_inception_from_file_shapes_and_batch_consistency(inception_file):
    net = InceptionFeatures(str(inception_file), backend="elt")
    x = images(2)
    f, lg = net(x, batch_size=2)
    assert f.shape == (2, 2048) and lg.shape == (2, 1008) and f.dtype == np.float64
    assert np.isfinite(f).all() and (f >= 0).all()  # pooled ReLU outputs
    f1, lg1 = net(x[1:2])
    np.testing.assert_allclose(f1[0], f[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lg1[0], lg[1], rtol=1e-4, atol=1e-4)
    gray, _ = net(x[:1, :, :, :1])  # grayscale is repeated to RGB
    rgb, _ = net(np.repeat(x[:1, :, :, :1], 3, -1))
    np.testing.assert_allclose(gray, rgb)


def test_inception_refuses_wrong_files(inception_file, tmp_path):
    with pytest.raises(ValueError, match="SHA-256"):
        InceptionFeatures(str(inception_file), sha256="0" * 64, backend="elt")
    named = tmp_path / WEIGHTS_NAME  # the standard name: its hash must start with the name's 8 digits
    named.write_bytes(inception_file.read_bytes())
    with pytest.raises(ValueError, match="6726825d"):
        InceptionFeatures(str(named), backend="elt")
    with pytest.raises(FileNotFoundError, match="not found"):
        InceptionFeatures(str(tmp_path / "missing.pth"), backend="elt")
    junk = tmp_path / "junk.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, junk)
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        InceptionFeatures(str(junk), backend="elt")


@pytest.mark.skipif(not fidelity_available(), reason="torch-fidelity is not installed (make setup installs it)")
@pytest.mark.parametrize("size", [40, 299, 512])  # upsampled, as is, downsampled
def test_inception_matches_torch_fidelity(inception_file, size):
    """elt's port against torch-fidelity's own InceptionV3 module (loaded from its file, torchvision never
    imported), the same random weights in both: pool features and unbiased logits agree to 1e-5."""
    import sys

    x = images(3, size=size, seed=size)
    ours = InceptionFeatures(str(inception_file), backend="elt")(x)
    theirs = InceptionFeatures(str(inception_file), backend="torch-fidelity")(x)
    assert "torchvision" not in sys.modules and "torch_fidelity" not in sys.modules
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tf1_bilinear_resize():
    ramp = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    out = resize_bilinear_tf1(ramp, 20)
    src = torch.arange(20) * (8 / 20)  # TF1: source = destination × in/out, clamped at the last pixel
    np.testing.assert_allclose(out[0, 0, 0].numpy(), src.clamp(max=7).numpy(), atol=1e-5)
    np.testing.assert_allclose(out[0, 0, :, 5].numpy(), np.full(20, float(out[0, 0, 0, 5])), atol=1e-6)
    x = torch.rand(2, 3, 7, 7)
    torch.testing.assert_close(resize_bilinear_tf1(x, 7), x)


def test_frechet_identities_and_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(0.3, 1.5, size=(300, 16)) @ rng.normal(size=(16, 16))
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_streaming_stats_match_numpy():
    f = np.random.default_rng(1).normal(size=(250, 8)) * 3 + 1
    s = StreamingStats(8)
    for chunk in np.array_split(f, 7):
        s.update(chunk)
    mu, cov = s.reduce().mean_cov()  # no process group: reduce is the identity
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="expected features"):
        s.update(np.zeros((2, 3)))


def test_inception_score_identities():
    assert inception_score(np.zeros((100, 1008)))[0] == pytest.approx(1.0)  # uniform predictions
    confident = np.full((100, 10), -1e4)
    confident[np.arange(100), np.arange(100) % 10] = 0  # sure, and every class equally often
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    one_class = np.full((100, 10), -1e4)
    one_class[:, 3] = 0
    assert inception_score(one_class)[0] == pytest.approx(1.0)


def test_precision_recall_identities():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 6))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    far = real + 100
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # a fake set covering only half the real manifold: precision stays high, recall drops
    half = real[real[:, 0] > 0]
    p, r = precision_recall(real, half, k=3)
    assert p == 1.0 and 0.3 < r < 0.8


def test_adm_npz_export(tmp_path):
    x = images(5, size=16, channels=1)
    path = export_adm_npz(x, tmp_path / "samples" / "s.npz", labels=np.arange(5))
    with np.load(path) as z:
        assert z["arr_0"].shape == (5, 16, 16, 3) and z["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(z["arr_0"][..., 2], x[..., 0])
        np.testing.assert_array_equal(z["arr_1"], np.arange(5))
    with pytest.raises(ValueError, match="uint8"):
        export_adm_npz(x.astype(np.float32), tmp_path / "bad.npz")


def test_fid_cli_end_to_end(inception_file, tmp_path, monkeypatch, capsys):
    """`elt fid` from files only: an ADM-layout sample .npz against a reference .npz; the reference's
    features are cached; a sample set equal to the reference scores FID 0 and precision = recall = 1."""
    from elt.apps.cli import main

    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path / "cache"))
    ref = export_adm_npz(images(6, size=24, seed=3), tmp_path / "ref.npz")
    out = tmp_path / "m.json"
    args = ["--quiet", "fid", "--samples", str(ref), "--ref", str(ref), "--inception", str(inception_file),
            "--batch-size", "3", "--json", str(out)]
    assert main(args) == 0
    import json
    m = json.loads(out.read_text())
    assert m["fid"] == pytest.approx(0, abs=1e-6) and m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["n_samples"] == 6 and m["is"] >= 1.0
    assert len(list((tmp_path / "cache").glob("inception-ref-*.npz"))) == 1
    assert main(["--quiet", "fid", "--samples", str(tmp_path / "none.npz"), "--ref", str(ref),
                 "--inception", str(inception_file)]) == 2
    assert "not found" in capsys.readouterr().err


def _imagenet_folder(root, per_class=20):
    """An ImageNet-layout folder (train/CLASS/*.png, val/CLASS/*.png) of 10 × per_class training RGB images and
    10 × 2 held-out ones, made from the embedded digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(10):
        for split, imgs in (("train", d.images[d.target == c][:per_class]),
                            ("val", d.images[d.target == c][per_class:per_class + 2])):
            (root / split / f"n{c:08d}").mkdir(parents=True)
            for k, img in enumerate(imgs):
                g = (img * 255 / 16).astype(np.uint8)
                rgb = np.stack([g, 255 - g, g // 2], -1)
                Image.fromarray(rgb).resize((12, 12), Image.NEAREST).save(root / split / f"n{c:08d}" / f"{k}.png")
    return root


@pytest.mark.slow
def test_imagenet_layout_extract_train_sample_adm_fid(inception_file, tmp_path, monkeypatch, capsys):
    """Issue 7's pipeline end to end on CPU: a 200-image ImageNet-layout folder → `elt extract` (sharded,
    resumable) → `elt train` from the shards → `elt sample --folder` (class-balanced, ADM npz) →
    `elt fid` with Inception weights from a local file."""
    from elt.apps.cli import main
    from elt.data.folder import load_image_folder
    from elt.data.extracted import Extracted

    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _imagenet_folder(tmp_path / "imagenet")
    ext = tmp_path / "extracted"
    base = ["--config", "digits-maskgit", "--set", "data.image_size=8"]
    extract = ["--quiet", "extract", *base, "--set", "data.dataset=folder", "--data-dir", str(folder),
               "--out", str(ext), "--shard-size", "64"]
    assert main(extract) == 0
    codes = Extracted(ext)
    assert len(codes) == 200 and codes.shape[1:] == (8 * 8 * 3,) and codes.meta["num_shards"] == 4
    assert np.bincount(codes.labels.numpy()).tolist() == [20] * 10
    first = codes[torch.arange(200)]
    (ext / "shard_00002.npy").unlink()  # an interrupted extraction: the rerun makes only what is missing
    assert main(extract) == 0
    torch.testing.assert_close(Extracted(ext)[torch.arange(200)], first)
    assert main(["--quiet", "train", *base, "--set", "data.dataset=extracted", "--data-dir", str(ext),
                 "--out", str(tmp_path / "run"), "--steps", "3", "--set", "model.width=32", "--set", "model.heads=2",
                 "--set", "train.batch_size=8", "--set", "train.warmup_steps=1"]) == 0
    assert main(["--quiet", "train", *base[:2], "--set", "data.image_size=12", "--set", "data.dataset=extracted",
                 "--data-dir", str(ext), "--out", str(tmp_path / "bad")]) == 2
    assert "other image_size" in capsys.readouterr().err
    ext.rename(tmp_path / "moved")  # the run samples without its extraction folder (run/data.json)
    assert main(["--quiet", "sample", "--run", str(tmp_path / "run"), "--loops", "2", "--n", "10",
                 "--folder", str(tmp_path / "samples"), "--shard-size", "5"]) == 0
    (sample_dir,) = (tmp_path / "samples").iterdir()
    import json
    manifest = json.loads((sample_dir / "manifest.json").read_text())
    assert manifest["class_names"] == Extracted(tmp_path / "moved").classes
    spec = tmp_path / "run" / "data.json"
    good = spec.read_text()
    spec.write_text("{not json")
    assert main(["--quiet", "sample", "--run", str(tmp_path / "run"), "--loops", "1", "--n", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "data.json is damaged" in capsys.readouterr().err
    spec.write_text(good)
    adm = sample_dir / "samples_adm.npz"
    with np.load(adm) as z:
        assert z["arr_0"].shape == (10, 8, 8, 3) and sorted(z["arr_1"].tolist()) == list(range(10))
    real, _, _ = load_image_folder(str(folder), "train", 8)
    ref = export_adm_npz(real[::20], tmp_path / "ref.npz")  # one image per class
    assert main(["--quiet", "fid", "--samples", str(adm), "--ref", str(ref), "--inception", str(inception_file),
                 "--batch-size", "10", "--json", str(tmp_path / "fid.json")]) == 0
    m = json.loads((tmp_path / "fid.json").read_text())
    assert m["fid"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["n_samples"] == 10
    # a damaged image: skipped (and counted), or one clear error with data.strict_images
    (folder / "train" / "n00000003" / "zz-broken.png").write_bytes(b"not a png")
    again = [*extract[:-4], "--out", str(tmp_path / "again"), "--shard-size", "64"]
    assert main(again) == 0 and len(Extracted(tmp_path / "again")) == 200
    assert main([*again[:-4], "--out", str(tmp_path / "strict"), "--set", "data.strict_images=true"]) == 2
    assert "zz-broken.png" in capsys.readouterr().err


def test_extract_latents_of_an_embedded_set_and_train_diffusion_from_them(tmp_path, monkeypatch):
    """The diffusion side: float16 latents in the shards (here pixel space of the 8×8 digits, with
    flipped copies), and a DiT trained from them."""
    from elt.apps.cli import main
    from elt.data import load_data
    from elt.data.extracted import Extracted

    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "latents"
    assert main(["--quiet", "extract", "--config", "digits-dit", "--out", str(out), "--shard-size", "500",
                 "--flip"]) == 0
    codes = Extracted(out)
    n = len(load_data("digits", "train"))
    assert codes.latents and len(codes) == 2 * n and codes.meta["dtype"] == "float16"
    pair = codes[torch.tensor([0, 500])]  # shard 0: its 500 originals, then their mirror images
    assert pair.dtype == torch.float32 and pair.shape[1:] == tuple(codes.meta["shape"])
    torch.testing.assert_close(pair[1], pair[0].flip(-1), atol=2e-3, rtol=0)  # pixel space: a flip is a flip
    assert (pair[0] - pair[0].flip(-1)).abs().max() > 0.1
    assert main(["--quiet", "train", "--config", "digits-dit", "--set", "data.dataset=extracted", "--data-dir",
                 str(out), "--out", str(tmp_path / "run"), "--steps", "2", "--set", "train.batch_size=8",
                 "--set", "train.warmup_steps=1"]) == 0


def test_reduced_gpu_recipe_builds_on_256_tokens():
    """The reduced recipe of docs/reproduce.md (ELT-B 6N×2L on Fashion-MNIST at 64×64): 64×64
    garments, its VQ-VAE's 16×16 grid of 1024 codes, and the model (here at width 64) on it."""
    from elt.data import load_data
    from elt.engine.build import build_model, make_tokenizer
    from elt.presets import get_preset

    small = load_data("fmnist", "test", image_size=64)
    native = load_data("fmnist", "test")
    assert small.images.shape == (10_000, 64, 64, 1) and small.images.dtype == np.uint8
    back = torch.nn.functional.interpolate(torch.from_numpy(small.images[:50, ..., 0]).float()[:, None], size=28,
                                           mode="area")[:, 0].numpy()
    assert np.abs(back - native.images[:50, ..., 0]).mean() < 12  # the same garments, resampled
    cfg = get_preset("fmnist64-maskgit-B-6Nx2L")
    assert (cfg.model.width, cfg.train.precision) == (768, "bf16")
    tok = make_tokenizer(cfg, small.images.shape[1:])
    ids = tok.encode(torch.from_numpy(small.images[:2]).permute(0, 3, 1, 2).float() / 255)
    assert ids.shape == (2, 256) and tok.codebook_size == 1024
    cfg.model.width, cfg.model.heads = 64, 4
    model = build_model(cfg, tok, 10).eval()
    assert model(ids, torch.tensor([1, 2]), loops=2).shape == (2, 256, 1024)
