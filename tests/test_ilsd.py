"""The ILSD objective: schedule, Lint draws, loss composition, gradient routing."""
import pytest
import torch

from conftest import tiny_masked
from elt.core.ilsd import ILSD
from elt.masked import MaskedFramework


def test_lambda_goes_linearly_from_one_to_zero():
    obj = ILSD(1, 4, total_steps=101)
    assert obj.lam(0) == 1.0
    assert obj.lam(50) == pytest.approx(0.5)
    assert obj.lam(100) == 0.0
    lams = [obj.lam(s) for s in range(101)]
    assert all(a >= b for a, b in zip(lams, lams[1:]))


def test_student_loops_uniform_in_lmin_to_lmax_minus_one():
    obj = ILSD(2, 5, total_steps=10)
    g = torch.Generator().manual_seed(0)
    draws = [obj.draw_lint(g) for _ in range(3000)]
    assert set(draws) == {2, 3, 4}
    for v in (2, 3, 4):
        assert abs(draws.count(v) / 3000 - 1 / 3) < 0.04


def test_vanilla_and_degenerate_range_draw_no_student():
    assert ILSD(1, 4, 10, "vanilla").draw_lint() is None
    assert ILSD(3, 3, 10).draw_lint() is None
    with pytest.raises(ValueError):
        ILSD(1, 4, 10, "distill")
    with pytest.raises(ValueError):
        ILSD(5, 4, 10)


def _losses():
    torch.manual_seed(0)
    fw = MaskedFramework(codebook_size=11, num_classes=3, label_dropout=0.0, label_smoothing=0.0)
    tokens = torch.randint(0, 11, (4, 9))
    labels = torch.tensor([0, 1, 2, 0])
    (inputs, lab), _, mask = fw.corrupt(tokens, labels)
    return fw, tokens, inputs, lab, mask


def test_total_is_the_spec_formula():
    fw, target, inputs, lab, mask = _losses()
    model = tiny_masked()
    obj = ILSD(1, 3, total_steps=11)
    outs = model.forward_exits(inputs, lab, loops=3, exits=[2])
    gt = lambda p: fw.gt_loss(p, target, mask)  # noqa: E731
    dist = lambda s, t: fw.dist_loss(s, t, mask)  # noqa: E731
    total, parts = obj(outs, 2, step=3, gt_loss=gt, dist_loss=dist)
    lam = obj.lam(3)
    expected = gt(outs[3]) + lam * gt(outs[2]) + (1 - lam) * dist(outs[2], outs[3])
    assert torch.allclose(total, expected)
    assert set(parts) == {"loss", "loss_teacher", "loss_student", "loss_dist"}
    assert all(not v.requires_grad for v in parts.values()) and torch.equal(parts["loss"], total.detach())
    vanilla, vparts = ILSD(1, 3, 11, "vanilla")(outs, None, 3, gt, dist)
    assert torch.allclose(vanilla, gt(outs[3])) and set(vparts) == {"loss", "loss_teacher"}


def test_teacher_gets_no_gradient_from_distillation():
    fw, target, inputs, lab, mask = _losses()
    teacher = torch.randn(4, 9, 11, requires_grad=True)
    student = torch.randn(4, 9, 11, requires_grad=True)
    obj = ILSD(1, 3, total_steps=2)
    # last step: λ = 0, so the only path from the student to the loss is the distillation term
    total, _ = obj({3: teacher, 1: student}, 1, step=1,
                   gt_loss=lambda p: 0.0 * p.sum(), dist_loss=lambda s, t: fw.dist_loss(s, t, mask))
    total.backward()
    assert teacher.grad is not None and torch.count_nonzero(teacher.grad) == 0
    assert torch.count_nonzero(student.grad) > 0


def test_gradients_of_all_terms_reach_shared_weights():
    fw, target, inputs, lab, mask = _losses()
    model = tiny_masked().train()
    obj = ILSD(1, 3, total_steps=4)
    outs = model.forward_exits(inputs, lab, loops=3, exits=[1])
    # distillation term alone (teacher detached inside): still reaches the shared layers via the student
    loss = fw.dist_loss(outs[1], outs[3].detach(), mask)
    loss.backward()
    assert all(p.grad is not None for p in model.stack.layers[0].parameters())
    model.zero_grad()
    total, _ = obj(model.forward_exits(inputs, lab, loops=3, exits=[1]), 1, 0,
                   lambda p: fw.gt_loss(p, target, mask), lambda s, t: fw.dist_loss(s, t, mask))
    total.backward()
    assert model.stack.layers[1].mlp.fc2.weight.grad.abs().sum() > 0


def test_one_forward_pass_per_step():
    """Teacher and student come from one pass: the embedding runs once."""
    model = tiny_masked()
    calls = []
    model.token_emb.register_forward_hook(lambda *a: calls.append(1))
    model.forward_exits(torch.zeros(2, 9, dtype=torch.long), torch.zeros(2, dtype=torch.long), loops=4, exits=[1, 2])
    assert len(calls) == 1


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_fused_student_loss_equals_the_separate_terms(lam):
    fw, target, inputs, lab, mask = _losses()
    teacher = torch.randn(4, 9, 11)
    student = torch.randn(4, 9, 11, requires_grad=True)
    combined, gt, dist = fw.student_loss(student, teacher, target, mask, lam)
    separate = lam * fw.gt_loss(student, target, mask) + (1 - lam) * fw.dist_loss(student, teacher, mask)
    assert torch.allclose(combined, separate, atol=1e-6)
    assert torch.allclose(gt, fw.gt_loss(student, target, mask), atol=1e-6)
    assert torch.allclose(dist, fw.dist_loss(student, teacher, mask), atol=1e-6)
    (g_fused,) = torch.autograd.grad(combined, student)
    (g_sep,) = torch.autograd.grad(separate, student)
    assert torch.allclose(g_fused, g_sep, atol=1e-6)


def test_teacher_gets_no_gradient_through_the_fused_student_loss():
    fw, target, inputs, lab, mask = _losses()
    teacher = torch.randn(4, 9, 11, requires_grad=True)
    student = torch.randn(4, 9, 11, requires_grad=True)
    total, parts = ILSD(1, 3, total_steps=2)(
        {3: teacher, 1: student}, 1, step=1, gt_loss=lambda p: 0.0 * p.sum(), dist_loss=None,
        student_loss=lambda s, t, lam: fw.student_loss(s, t, target, mask, lam))
    total.backward()
    assert teacher.grad is not None and torch.count_nonzero(teacher.grad) == 0
    assert torch.count_nonzero(student.grad) > 0 and parts["loss_dist"] > 0


# ---- the ablation switches (ILSDOptions; config section `ilsd`) ----

from elt.core.ilsd import ILSDOptions  # noqa: E402


def test_config_section_and_core_options_hold_the_same_switches_and_defaults():
    import dataclasses

    from elt.config import ILSDConfig

    # the config section (mutable, YAML) and the core's frozen options are two dataclasses by layering;
    # build_objective maps one onto the other field by field, so they must not drift apart
    assert dataclasses.asdict(ILSDConfig()) == dataclasses.asdict(ILSDOptions())


def test_lambda_schedules_and_horizon():
    cos = ILSD(1, 4, 101, options=ILSDOptions(lambda_schedule="cosine"))
    assert cos.lam(0) == 1.0 and cos.lam(50) == pytest.approx(0.5) and cos.lam(100) == pytest.approx(0.0)
    assert cos.lam(25) == pytest.approx(0.5 * (1 + 0.7071067811865476))
    half = ILSD(1, 4, 101, options=ILSDOptions(lambda_horizon=0.5))
    assert half.lam(25) == pytest.approx(0.5) and half.lam(50) == 0.0 and half.lam(90) == 0.0
    const = ILSD(1, 4, 101, options=ILSDOptions(lambda_schedule="constant", lambda_value=0.3))
    assert {const.lam(s) for s in (0, 50, 100)} == {0.3}
    with pytest.raises(ValueError, match="lambda_schedule"):
        ILSDOptions(lambda_schedule="exp")
    with pytest.raises(ValueError, match="at least one"):
        ILSDOptions(teacher_gt=False, student_gt=False, distill=False)


@pytest.mark.parametrize("terms, expect", [
    (dict(distill=False), "t + s"),                 # GT on both exits (the paper's Fig. 13 ablation)
    (dict(student_gt=False), "t + d"),              # distillation only
    (dict(teacher_gt=False), "lam s + (1-lam) d"),  # the student's terms alone
])
def test_each_term_switches_off_and_the_other_student_term_takes_weight_one(terms, expect):
    fw, target, inputs, lab, mask = _losses()
    outs = tiny_masked().forward_exits(inputs, lab, loops=3, exits=[2])
    gt = lambda p: fw.gt_loss(p, target, mask)  # noqa: E731
    dist = lambda s, t: fw.dist_loss(s, t, mask)  # noqa: E731
    obj = ILSD(1, 3, total_steps=11, options=ILSDOptions(**terms))
    total, parts = obj(outs, 2, step=3, gt_loss=gt, dist_loss=dist,
                       student_loss=lambda s, t, lam: fw.student_loss(s, t, target, mask, lam))
    t, s, d, lam = gt(outs[3]), gt(outs[2]), dist(outs[2], outs[3]), obj.lam(3)
    value = {"t + s": t + s, "t + d": t + d, "lam s + (1-lam) d": lam * s + (1 - lam) * d}[expect]
    assert torch.allclose(total, value, atol=1e-6)
    assert obj.mix(3) == {"t + s": 1.0, "t + d": 0.0, "lam s + (1-lam) d": lam}[expect]  # the λ logged
    assert set(parts) == {"loss", "loss_teacher", "loss_student", "loss_dist"}  # every term still logged
    # a switched-off student term is logged but builds no graph: backward pays only for the terms in use
    grad_on = {}
    spy_gt = lambda p: (grad_on.setdefault("gt" if p is outs[3] else "student_gt", torch.is_grad_enabled()),  # noqa: E731
                        gt(p))[1]
    spy_dist = lambda s_, t_: (grad_on.setdefault("distill", torch.is_grad_enabled()), dist(s_, t_))[1]  # noqa: E731
    total2, _ = obj(outs, 2, step=3, gt_loss=spy_gt, dist_loss=spy_dist)
    assert torch.allclose(total2, value, atol=1e-6)
    for term in ("student_gt", "distill"):
        assert grad_on[term] is terms.get(term, True)


def test_teacher_gt_off_and_distillation_only_never_train_the_teacher_exit_directly():
    fw, target, inputs, lab, mask = _losses()
    teacher = torch.randn(4, 9, 11, requires_grad=True)
    student = torch.randn(4, 9, 11, requires_grad=True)
    obj = ILSD(1, 3, 5, options=ILSDOptions(teacher_gt=False))
    total, _ = obj({3: teacher, 1: student}, 1, 2, lambda p: fw.gt_loss(p, target, mask),
                   lambda s, t: fw.dist_loss(s, t, mask))
    total.backward()
    assert teacher.grad is None or torch.count_nonzero(teacher.grad) == 0


def test_lint_per_example_picks_each_examples_own_exit():
    fw, target, inputs, lab, mask = _losses()
    model = tiny_masked()
    obj = ILSD(1, 4, 10, options=ILSDOptions(lint_mode="example"))
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([obj.draw_lint(g, 4) for _ in range(750)])
    assert set(draws.tolist()) == {1, 2, 3} and all(abs((draws == v).float().mean() - 1 / 3) < 0.04 for v in (1, 2, 3))
    lint = torch.tensor([3, 1, 2, 1])
    assert obj.exits(lint) == (1, 2, 3)
    outs = model.forward_exits(inputs, lab, loops=4, exits=obj.exits(lint), positions=mask)  # rows: masked tokens
    rows = fw.rows(mask)
    student = obj.student(outs, lint, rows)
    for i in range(len(rows)):
        assert torch.equal(student[i], outs[int(lint[rows[i]])][i])
    # the per-example student equals running each example alone at its Lint
    for b in range(4):
        alone = model.forward_exits(inputs[b:b + 1], lab[b:b + 1], loops=int(lint[b]), exits=[],
                                    positions=mask[b:b + 1])[int(lint[b])]
        torch.testing.assert_close(student[rows == b], alone, atol=1e-5, rtol=1e-5)


def test_distillation_temperature_scales_soft_targets_and_keeps_the_fused_path_exact():
    fw, target, inputs, lab, mask = _losses()
    teacher, student = torch.randn(4, 9, 11), torch.randn(4, 9, 11)
    hot = MaskedFramework(11, 3, 0.0, 0.0, temperature=2.0)
    pt = (teacher[mask] / 2).softmax(-1)
    expected = -(pt * (student[mask] / 2).log_softmax(-1)).sum(-1).mean() * 4
    assert torch.allclose(hot.dist_loss(student, teacher, mask), expected)
    combined, _, _ = hot.student_loss(student, teacher, target, mask, 0.3)
    assert torch.allclose(combined, 0.3 * hot.gt_loss(student, target, mask) + 0.7 * expected, atol=1e-6)


def test_config_section_reaches_the_objective_and_the_report_label(tmp_path):
    from elt.config import ConfigError, apply_overrides
    from elt.engine.build import build_objective
    from elt.presets import get_preset

    cfg = apply_overrides(get_preset("digits-maskgit"), ["ilsd.lambda_schedule=cosine", "ilsd.distill=false"])
    obj = build_objective(cfg.validate())
    assert obj.options.lambda_schedule == "cosine" and not obj.options.distill
    assert cfg.objective_label() == "ilsd[lambda_schedule=cosine, distill=False]"
    assert get_preset("digits-maskgit").objective_label() == "ilsd"
    with pytest.raises(ConfigError, match="ilsd.lambda_horizon"):
        apply_overrides(get_preset("digits-maskgit"), ["ilsd.lambda_horizon=0"]).validate()
    with pytest.raises(ConfigError, match="ilsd.temperature"):
        apply_overrides(get_preset("fmnist-dit"), ["ilsd.temperature=2"]).validate()
    renamed = apply_overrides(get_preset("fmnist-maskgit"), ["model.unique_layers=8", "model.max_loops=1"])
    assert renamed.name == "fmnist-maskgit-8Nx1L"


def test_lint_drawn_in_proportion_to_compute_gives_every_exit_the_same_share():
    """ilsd.lint_distribution=flops: p(L) ∝ 1/FLOPs(L), so p(L)·FLOPs(L) is the same for every exit; the
    paper's uniform draw is unchanged (the same generator gives the same Lints as before)."""
    from elt.config import apply_overrides
    from elt.engine.build import build_objective, nominal_model
    from elt.presets import get_preset

    cfg = apply_overrides(get_preset("fmnist-maskgit"), ["ilsd.lint_distribution=flops"]).validate()
    obj = build_objective(cfg)
    flops = [nominal_model(cfg).flops(L) for L in range(1, cfg.model.max_loops)]
    p = obj.lint_probabilities()
    assert p.sum().item() == pytest.approx(1.0) and p[0] > p[-1]
    shares = [pi * f for pi, f in zip(p.tolist(), flops)]
    assert max(shares) == pytest.approx(min(shares), rel=1e-9)
    draws = torch.tensor([obj.draw_lint(g) for g in [torch.Generator().manual_seed(0)] for _ in range(4000)])
    freq = torch.bincount(draws - 1, minlength=len(p)).double() / len(draws)
    assert torch.allclose(freq, p, atol=0.03)
    uniform = ILSD(1, 4, 10)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [uniform.draw_lint(g1) for _ in range(20)] == [int(torch.randint(1, 4, (1,), generator=g2)) for _ in range(20)]
    with pytest.raises(ValueError, match="needs the forward pass's FLOPs"):
        ILSD(1, 4, 10, options=ILSDOptions(lint_distribution="flops"))
