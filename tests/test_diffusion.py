"""Diffusion framework: schedules, weighting, samplers, the looped DiT and its ELT invariants."""
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_dit
from elt.diffusion import DiffusionFramework, DiffusionSampler, DiT, LogSNRSchedule, to_x0_eps
from elt.core.ilsd import ILSD
from elt.core.layers import AdaLNBlock


# ---- schedules -------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [0.0, 2 * math.log(2), -1.0])
def test_logsnr_endpoints_and_monotonicity(shift):
    s = LogSNRSchedule(shift)
    t = torch.linspace(0, 1, 1001)
    lam = s.logsnr(t)
    assert lam[0].item() == pytest.approx(15 + shift, abs=1e-4)
    assert lam[-1].item() == pytest.approx(-15 + shift, abs=1e-4)
    assert torch.all(lam[1:] < lam[:-1])  # strictly decreasing: more noise as t grows
    a, sg = s.alpha_sigma(t)
    assert torch.allclose(a ** 2 + sg ** 2, torch.ones_like(t), atol=1e-6)  # variance preserving
    assert torch.all(a[1:] <= a[:-1]) and torch.all(sg[1:] >= sg[:-1])


def test_plain_cosine_is_the_cosine_schedule_and_shift_follows_resolution():
    t = torch.tensor([0.25, 0.5, 0.75])
    # with λ range clipped at ±15, t_min ≈ 0 and t_max ≈ π/2: α² ≈ cos²(πt/2)
    a, _ = LogSNRSchedule().alpha_sigma(t)
    assert torch.allclose(a ** 2, torch.cos(math.pi * t / 2) ** 2, atol=1e-3)
    assert LogSNRSchedule.shifted_cosine(32).shift == pytest.approx(2 * math.log(2))
    assert LogSNRSchedule.shifted_cosine(128).shift == pytest.approx(-2 * math.log(2))
    assert torch.allclose(LogSNRSchedule.shifted_cosine(32).logsnr(t), LogSNRSchedule().logsnr(t) + 2 * math.log(2))


# ---- loss weighting --------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_weighted_loss_is_sigmoid_weighting_of_the_eps_mse(prediction):
    """Whatever the prediction target, the loss equals sigmoid(b − λ)·‖ε̂ − ε‖² (Kingma & Gao)."""
    sched, b = LogSNRSchedule(0.5), -3.0
    fw = DiffusionFramework(sched, num_classes=3, prediction=prediction, weight_bias=b, label_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 4, 4, generator=g)
    (x_t, t, _), target, weight = fw.corrupt(x0, torch.zeros(6, dtype=torch.long), g)
    pred = torch.randn(x0.shape, generator=g)
    a, s = (v.view(-1, 1, 1, 1) for v in sched.alpha_sigma(t))
    _, eps_hat = to_x0_eps(pred, x_t, a, s, prediction)
    _, eps_true = to_x0_eps(target, x_t, a, s, prediction)
    per_example = (eps_hat - eps_true).pow(2).flatten(1).mean(1)
    expected = (torch.sigmoid(b - sched.logsnr(t)) * per_example).mean()
    assert fw.gt_loss(pred, target, weight).item() == pytest.approx(expected.item(), rel=1e-4)
    # the target really is the named quantity: predicting it exactly gives zero loss
    assert fw.gt_loss(target, target, weight).item() == 0.0


def test_corruption_noises_at_the_drawn_level_and_drops_labels():
    sched = LogSNRSchedule()
    fw = DiffusionFramework(sched, num_classes=3, prediction="eps", label_dropout=0.1)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4000, 1, 2, 2, generator=g)
    (x_t, t, labels), eps, _ = fw.corrupt(x0, torch.ones(4000, dtype=torch.long), g)
    a, s = (v.view(-1, 1, 1, 1) for v in sched.alpha_sigma(t))
    assert torch.allclose(x_t, a * x0 + s * eps, atol=1e-6)
    assert abs((labels == 3).float().mean().item() - 0.1) < 0.015
    # stratified times: one per 1/B bin
    assert torch.equal(torch.sort((t * 4000).floor().long()).values, torch.arange(4000))


# ---- samplers --------------------------------------------------------------------------------

class Oracle(torch.nn.Module):
    """A 'network' that knows the data x0: returns the exact prediction for any x_t."""

    def __init__(self, x0, schedule, prediction):
        super().__init__()
        self.x0, self.schedule, self.prediction = x0, schedule, prediction
        self.in_channels, self.input_size, self.null_class = x0.shape[1], x0.shape[2], 99

    def forward(self, x, t, labels, loops):
        a, s = (v.view(-1, 1, 1, 1) for v in self.schedule.alpha_sigma(t))
        x0 = self.x0[: len(x)]
        eps = (x - a * x0) / s
        return {"v": a * eps - s * x0, "eps": eps, "x0": x0}[self.prediction]


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_sampler_with_exact_x0_oracle_returns_the_data(kind, prediction):
    sched = LogSNRSchedule(1.0)
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    sampler = DiffusionSampler(sched, steps=10, guidance=1.0, kind=kind, prediction=prediction)
    out = sampler(Oracle(x0, sched, prediction), torch.zeros(3, dtype=torch.long), 1, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_same_seed_same_samples_other_seed_other_samples(kind):
    model = tiny_dit()
    labels = torch.tensor([0, 2])
    sampler = DiffusionSampler(LogSNRSchedule(), steps=4, guidance=1.5, kind=kind)
    a, b, c = (sampler(model, labels, 2, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1))
    assert a.shape == (2, 2, 8, 8)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_guidance_scale_one_is_the_conditional_model_and_others_extrapolate():
    model = tiny_dit()
    x, labels = torch.randn(2, 2, 8, 8), torch.tensor([0, 1])
    cond = model(x, torch.full((2,), 0.3), labels, loops=2)
    uncond = model(x, torch.full((2,), 0.3), torch.full((2,), model.null_class), loops=2)
    one = DiffusionSampler(LogSNRSchedule(), guidance=1.0).predict(model, x, 0.3, labels, 2)
    assert torch.allclose(one, cond, atol=1e-6)
    three = DiffusionSampler(LogSNRSchedule(), guidance=3.0).predict(model, x, 0.3, labels, 2)
    assert torch.allclose(three, uncond + 3.0 * (cond - uncond), atol=1e-5)


# ---- the looped DiT ---------------------------------------------------------------------------

def test_adaln_zero_initialisation_makes_every_block_the_identity_and_output_zero():
    model = tiny_dit(perturb=False)
    h, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    for block in model.stack.layers:
        assert isinstance(block, AdaLNBlock)
        assert torch.equal(block(h, c), h)
    out = model(torch.randn(3, 2, 8, 8), torch.rand(3), torch.tensor([0, 1, 3]), loops=4)
    assert out.shape == (3, 2, 8, 8) and torch.count_nonzero(out) == 0


def test_dit_parameters_do_not_depend_on_loops():
    model = tiny_dit()
    n = sum(p.numel() for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for loops in (1, 4, 7):
        model(torch.randn(1, 2, 8, 8), torch.rand(1), torch.tensor([1]), loops=loops)
    assert sum(p.numel() for p in model.parameters()) == n
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dit_batch_equals_single():
    model = tiny_dit()
    x, t, y = torch.randn(4, 2, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    batch = model(x, t, y, loops=3)
    single = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1], loops=3) for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_dit_conditioning_is_reapplied_at_every_loop():
    """Each layer reads c on every loop: changing the class changes the per-loop update."""
    model = tiny_dit(unique_layers=1)
    seen = []
    model.stack.layers[0].ada.register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.randn(1, 2, 8, 8), torch.rand(1), torch.tensor([1]), loops=3)
    assert len(seen) == 3


def test_dit_forward_regression_values():
    model = tiny_dit()
    g = torch.Generator().manual_seed(7)
    out = model(torch.randn(1, 2, 8, 8, generator=g), torch.tensor([0.4]), torch.tensor([2]), loops=2)
    expected = torch.tensor(REGRESSION_SLICE)
    assert torch.allclose(out[0, 0, 0, :4], expected, atol=1e-4), out[0, 0, 0, :4].tolist()


REGRESSION_SLICE = [-0.34241, -0.02908, 0.0263, -0.01546]


def test_ilsd_with_diffusion_losses_routes_gradients():
    """The teacher gets no gradient from the distillation term; all terms reach the shared layers."""
    model = tiny_dit().train()
    fw = DiffusionFramework(LogSNRSchedule(), num_classes=3, label_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    inputs, target, weight = fw.corrupt(torch.randn(4, 2, 8, 8, generator=g), torch.tensor([0, 1, 2, 0]), g)
    outs = model.forward_exits(*inputs, loops=3, exits=[1])
    teacher = outs[3]
    teacher.retain_grad()
    total, parts = ILSD(1, 3, total_steps=2)(outs, 1, step=1, gt_loss=lambda p: 0.0 * p.sum(),
                                              dist_loss=lambda s, t: fw.dist_loss(s, t, weight))
    total.backward()
    assert torch.count_nonzero(teacher.grad) == 0  # λ = 0 and no GT term: only the detached teacher
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stack.layers[0].parameters())
    assert parts["loss_dist"] > 0


@pytest.mark.parametrize("loops", [1, 3])
def test_dit_analytic_flops_equal_torch_flop_counter(loops):
    model = tiny_dit()
    x, t, y = torch.randn(2, 2, 8, 8), torch.rand(2), torch.tensor([0, 1])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, y, loops=loops)
    assert counter.get_total_flops() == 2 * model.flops(loops)


def test_bad_patch_size_is_a_clear_error():
    with pytest.raises(ValueError, match="patch size"):
        DiT(10, 1, 3, patch_size=4)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sampling_flops_equal_torch_flop_counter(guidance):
    model = tiny_dit()
    sampler = DiffusionSampler(LogSNRSchedule(), steps=4, guidance=guidance)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        sampler(model, torch.tensor([0, 1, 2]), [1, 3, 2, 1], torch.Generator().manual_seed(0))
    assert counter.get_total_flops() == 3 * sampler.flops(model, [1, 3, 2, 1])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_dpm_solver_pp_with_exact_x0_oracle_returns_the_data(order, prediction):
    sched = LogSNRSchedule(1.0)
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    sampler = DiffusionSampler(sched, steps=7, kind="dpmpp2m", prediction=prediction, order=order)
    out = sampler(Oracle(x0, sched, prediction), torch.zeros(3, dtype=torch.long), 1, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)


def test_dpm_solver_pp_first_order_is_ddim_and_second_order_differs():
    model, labels = tiny_dit(), torch.tensor([0, 2])
    runs = {}
    for name, kw in {"ddim": {"kind": "ddim"}, "dpm1": {"kind": "dpmpp2m", "order": 1},
                     "dpm2": {"kind": "dpmpp2m", "order": 2}}.items():
        sampler = DiffusionSampler(LogSNRSchedule(), steps=6, guidance=1.5, **kw)
        runs[name] = sampler(model, labels, 2, torch.Generator().manual_seed(3))
    assert torch.allclose(runs["dpm1"], runs["ddim"], atol=1e-5)
    assert not torch.allclose(runs["dpm2"], runs["ddim"], atol=1e-3)  # the multistep correction acts


def test_dpm_solver_pp_converges_faster_than_ddim_on_a_smooth_model():
    """On a network whose x̂₀ drifts smoothly with t (a stand-in for a trained one), DPM-Solver++(2M) at 8 steps
    lands closer to the 400-step answer than DDIM does at 8."""
    sched = LogSNRSchedule()

    class Smooth(torch.nn.Module):
        """Predicts v = α·ε̂ − σ·x̂₀ (the sampler's default) for x̂₀ = tanh(0.7·x + 0.3·sin 3t)."""
        null_class, in_channels, input_size = 3, 1, 4

        def forward(self, x, t, labels, loops):
            a, s = (v.view(-1, 1, 1, 1) for v in sched.alpha_sigma(t))
            x0 = torch.tanh(0.7 * x + 0.3 * torch.sin(3 * t.view(-1, 1, 1, 1)))
            return a * (x - a * x0) / s - s * x0

    model, labels = Smooth(), torch.zeros(4, dtype=torch.long)
    ref = DiffusionSampler(sched, steps=400, kind="ddim")(model, labels, 1, torch.Generator().manual_seed(0))
    err = {kind: (DiffusionSampler(sched, steps=8, kind=kind)(model, labels, 1, torch.Generator().manual_seed(0))
                  - ref).abs().mean().item() for kind in ("ddim", "dpmpp2m")}
    assert err["dpmpp2m"] < err["ddim"], err
