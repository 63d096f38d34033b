from types import SimpleNamespace

import pytest

from elt.config import Config, ConfigError, apply_overrides, from_dict
from elt.presets import load_config
from elt.presets import ALIASES, PRESETS, get_preset


def test_yaml_round_trip(tmp_path):
    cfg = get_preset("fmnist-maskgit")
    cfg.train.lr = 3e-4
    cfg.eval.loops = [1, 2]
    cfg.save(tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert again == cfg


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'max_loops'"):
        from_dict({"model": {"max_loop": 3}})
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("fmnist-maskgti")


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ["train.lr=3e-4", "model.max_loops=6", "eval.loops=1,2,3", "sample.use_ema=false"])
    assert cfg.train.lr == 3e-4 and cfg.model.max_loops == 6 and cfg.eval.loops == [1, 2, 3]
    assert cfg.sample.use_ema is False
    with pytest.raises(ConfigError, match="integer"):
        apply_overrides(Config(), ["model.max_loops=2.5"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(Config(), ["train.lr"])


@pytest.mark.parametrize("override,key", [
    ("model.min_loops=5", "model.min_loops"), ("model.width=130", "model.width"),
    ("train.objective=distill", "train.objective"), ("sample.steps=0", "sample.steps"),
    ("data.dataset=cifar", "data.dataset"), ("eval.loops=[1,17]", "eval.loops"),  # digits-maskgit: Lmax 4
    ("sample.choice_temperature=-1", "sample.choice_temperature"), ("eval.ref_clips=1", "eval.ref_clips"),
])
def test_validation_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(get_preset("digits-maskgit"), [override]).validate()


@pytest.mark.parametrize("preset,override,match", [
    ("digits-maskgit", "train.motion_loss_weight=4", "has none"),       # no motionvq tokenizer here
    ("digits-maskgit", "sample.motion_order=last", "has none"),
    ("mfmnist-video", "train.motion_loss_weight=0", "finite number > 0"),
    ("mfmnist-video", "train.motion_loss_weight=.nan", "finite number > 0"),
    ("mfmnist-video", "sample.motion_order=middle", "choose"),
    ("digits-maskgit", "sample.motion_temperature=1", "for a motionvq"),
    ("mfmnist-video", "sample.motion_temperature=0", "finite number > 0"),
    ("mfmnist-video", "tokenizer.sprite_size=36", "below data.image_size"),  # the window must be smaller
    ("mfmnist-video", "tokenizer.sprite_size=30", "divisible by 2"),         # ... and a whole number of patches
    ("digits-maskgit", "tokenizer.sprite_size=4", "for a motionvq"),
])
def test_motion_settings_are_checked(preset, override, match):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}.*{match}"):
        apply_overrides(get_preset(preset), [override]).validate()
    apply_overrides(get_preset("mfmnist-video"), ["train.motion_loss_weight=4", "sample.motion_order=last",
                                                  "sample.motion_temperature=0.5", "tokenizer.sprite_size=0"]).validate()


def test_preset_names_carry_n_and_l():
    for name in PRESETS:
        if name in ALIASES:
            continue
        cfg = get_preset(name)
        assert cfg.name == name
        assert f"{cfg.model.unique_layers}Nx{cfg.model.max_loops}L" in name


@pytest.mark.parametrize("name", ["maskgit-L-8Nx3L", "maskgit-L-12Nx2L", "maskgit-XL-7Nx4L", "maskgit-L-24Nx1L"])
def test_paper_presets_build_and_run_at_reduced_width(name):
    import torch

    from elt.engine.build import build_model

    cfg = get_preset(name)
    assert cfg.model.width in (1024, 1152)
    cfg.model.width, cfg.model.heads = 64, 4
    model = build_model(cfg, SimpleNamespace(codebook_size=cfg.tokenizer.codebook_size, num_tokens=256), 1000).eval()
    out = model(torch.randint(0, 1024, (1, 256)), torch.tensor([7]), loops=cfg.model.max_loops)
    assert out.shape == (1, 256, 1024)
    assert len(model.stack.layers) == cfg.model.unique_layers


def test_paper_parameter_counts():
    """Spec §4.4: ELT-L 8N×3L ≈ 101M, 12N×2L ≈ 152M, ELT-XL 7N×4L ≈ 111M (layers only, ≈12·d² each)."""
    import torch

    from elt.engine.build import build_model

    for name, expected in [("maskgit-L-8Nx3L", 101e6), ("maskgit-L-12Nx2L", 152e6), ("maskgit-XL-7Nx4L", 111e6)]:
        cfg = get_preset(name)
        with torch.device("meta"):
            model = build_model(cfg, SimpleNamespace(codebook_size=1024, num_tokens=256), 1000)
        layers = sum(p.numel() for p in model.stack.parameters())
        assert abs(layers - expected) / expected < 0.02


DIT_PAPER = ["dit-16Nx2L", "dit-8Nx4L", "dit-4Nx8L", "dit-1Nx32L", "dit-16Nx1L", "dit-32Nx1L"]


@pytest.mark.parametrize("name", DIT_PAPER)
def test_paper_dit_presets_build_and_run_at_reduced_width(name):
    import torch

    from elt.engine.build import build_model, nominal_tokenizer

    cfg = get_preset(name)
    assert cfg.framework == "diffusion" and cfg.tokenizer.kind == "diffusers_vae"
    assert cfg.model.unique_layers * cfg.model.max_loops in (16, 32)  # effective depth 32 (the paper's diffusion rows)
    tok = nominal_tokenizer(cfg)
    assert tok.latent_shape == (4, 32, 32)  # SD VAE latents of 256×256 images
    cfg.model.width, cfg.model.heads = 64, 4
    model = build_model(cfg, tok, 1000).eval()
    assert model.num_tokens == 256  # patch 2
    out = model(torch.randn(1, 4, 32, 32), torch.tensor([0.5]), torch.tensor([7]), loops=cfg.model.max_loops)
    assert out.shape == (1, 4, 32, 32)
    assert len(model.stack.layers) == cfg.model.unique_layers


def test_paper_dit_parameter_counts():
    """Spec §5: DiT 16 layers 1.1B, 32 layers 2.1B; ELT 8N×4L 539M, 4N×8L 271M."""
    import torch

    from elt.engine.build import build_model, nominal_tokenizer

    for name, expected in [("dit-16Nx1L", 1.1e9), ("dit-32Nx1L", 2.1e9), ("dit-8Nx4L", 539e6), ("dit-4Nx8L", 271e6)]:
        cfg = get_preset(name)
        with torch.device("meta"):
            model = build_model(cfg, nominal_tokenizer(cfg), 1000)
        total = sum(p.numel() for p in model.parameters())
        assert abs(total - expected) / expected < 0.035, (name, total)


def test_tokenizer_must_suit_the_framework():
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        apply_overrides(get_preset("digits-dit"), ["tokenizer.kind=vqvae"]).validate()
    with pytest.raises(ConfigError, match="diffusion.prediction"):
        apply_overrides(get_preset("digits-dit"), ["diffusion.prediction=score"]).validate()
