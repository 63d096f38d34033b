"""Masked-token framework: training mask, losses, MaskGIT decoding."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_masked
from elt.masked import MaskedFramework, MaskGITSampler, cosine_mask_ratio


def test_cosine_mask_ratio_endpoints():
    assert cosine_mask_ratio(0.0) == 1.0
    assert cosine_mask_ratio(1.0) == pytest.approx(0.0, abs=1e-12)
    r = torch.linspace(0, 1, 50)
    assert torch.all(cosine_mask_ratio(r)[1:] <= cosine_mask_ratio(r)[:-1])


def test_corrupt_masks_ceil_gamma_t_positions():
    fw = MaskedFramework(codebook_size=11, num_classes=3, label_dropout=0.0)
    tokens = torch.randint(0, 11, (500, 16))
    g = torch.Generator().manual_seed(0)
    (inputs, labels), _, mask = fw.corrupt(tokens, torch.zeros(500, dtype=torch.long), g)
    g = torch.Generator().manual_seed(0)
    r = torch.rand(500, generator=g)
    expected = torch.ceil(torch.cos(math.pi * r / 2) * 16).clamp(1, 16)
    assert torch.equal(mask.sum(1), expected.long())
    assert torch.all(inputs[mask] == 11) and torch.equal(inputs[~mask], tokens[~mask])


def test_label_dropout_rate():
    fw = MaskedFramework(codebook_size=11, num_classes=3, label_dropout=0.1)
    (_, labels), _, _ = fw.corrupt(torch.zeros(20000, 4, dtype=torch.long), torch.ones(20000, dtype=torch.long),
                              torch.Generator().manual_seed(1))
    assert abs((labels == 3).float().mean().item() - 0.1) < 0.01
    assert set(labels.unique().tolist()) == {1, 3}


def test_gt_loss_uses_only_masked_positions():
    fw = MaskedFramework(codebook_size=5, num_classes=2, label_smoothing=0.0)
    logits = torch.randn(2, 6, 5)
    target = torch.randint(0, 5, (2, 6))
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    loss = fw.gt_loss(logits, target, mask)
    changed = logits.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    assert torch.allclose(loss, fw.gt_loss(changed, target, mask))
    assert torch.allclose(loss, F.cross_entropy(logits[mask], target[mask]))


def test_dist_loss_is_soft_cross_entropy_and_minimal_at_teacher():
    fw = MaskedFramework(codebook_size=5, num_classes=2)
    teacher = torch.randn(2, 4, 5)
    mask = torch.ones(2, 4, dtype=torch.bool)
    at_teacher = fw.dist_loss(teacher, teacher, mask)
    entropy = -(teacher.softmax(-1) * teacher.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(at_teacher, entropy)
    assert fw.dist_loss(torch.randn(2, 4, 5), teacher, mask) > at_teacher


def test_decoding_unmasks_everything_following_the_schedule():
    model = tiny_masked(tokens=16, codebook=11)
    sampler = MaskGITSampler(steps=6)
    masked_counts = []
    out = sampler(model, torch.tensor([0, 1, 2]), policy=2, generator=torch.Generator().manual_seed(0),
                  callback=lambda k, toks: masked_counts.append((toks == model.mask_id).sum(1).tolist()))
    assert out.shape == (3, 16) and not (out == model.mask_id).any()
    assert out.max() < 11
    expected, masked = [], 16
    for k in range(6):
        n = 0 if k == 5 else min(max(1, math.floor(16 * math.cos(math.pi / 2 * (k + 1) / 6))), masked - 1)
        expected.append([n] * 3)
        masked = n
    assert masked_counts == expected


def test_decoded_tokens_are_never_remasked():
    model = tiny_masked(tokens=16)
    history = []
    MaskGITSampler(steps=8)(model, torch.tensor([0, 1]), policy=1, generator=torch.Generator().manual_seed(3),
                            callback=lambda k, t: history.append(t.clone()))
    for before, after in zip(history, history[1:]):
        known = before != model.mask_id
        assert torch.equal(before[known], after[known])


def test_same_seed_same_samples_and_different_seed_differs():
    model = tiny_masked(tokens=16)
    s = MaskGITSampler(steps=4, guidance=2.0)
    labels = torch.tensor([0, 1, 2, 0])
    a = s(model, labels, 2, torch.Generator().manual_seed(7))
    b = s(model, labels, 2, torch.Generator().manual_seed(7))
    c = s(model, labels, 2, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_one_equals_conditional_model():
    model = tiny_masked(tokens=16)
    tokens = torch.full((2, 16), model.mask_id)
    labels = torch.tensor([1, 2])
    assert torch.equal(MaskGITSampler(guidance=1.0).logits(model, tokens, labels, 2), model(tokens, labels, loops=2))
    guided = MaskGITSampler(guidance=3.0).logits(model, tokens, labels, 2)
    cond = model(tokens, labels, loops=2)
    uncond = model(tokens, torch.full_like(labels, model.null_class), loops=2)
    assert torch.allclose(guided, 3 * cond - 2 * uncond, atol=1e-5)


def test_loop_schedule_per_step_is_used():
    model = tiny_masked(tokens=16)
    seen = []
    orig = model.forward_exits

    def spy(*a, loops, exits=(), **kw):
        seen.append(loops)
        return orig(*a, loops=loops, exits=exits, **kw)

    model.forward_exits = spy
    MaskGITSampler(steps=3)(model, torch.tensor([0]), policy=[3, 2, 1])
    assert seen == [3, 2, 1]


def test_position_weights_weigh_the_mean_and_one_is_the_plain_mean():
    """A motion token at weight w counts as w tokens in both losses and in the batch split; weights of 1
    are the unweighted mean exactly."""
    logits, teacher = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    target = torch.randint(0, 7, (3, 5))
    mask = torch.rand(3, 5) < 0.6
    mask[:, -1] = True
    plain = MaskedFramework(codebook_size=7, num_classes=2)
    ones = MaskedFramework(codebook_size=7, num_classes=2, position_weights=torch.ones(5))
    for loss in ("gt_loss", "dist_loss"):
        a = getattr(plain, loss)(logits, target if loss == "gt_loss" else teacher, mask)
        assert torch.allclose(a, getattr(ones, loss)(logits, target if loss == "gt_loss" else teacher, mask))
    w = torch.tensor([1.0, 1, 1, 1, 4])
    heavy = MaskedFramework(codebook_size=7, num_classes=2, label_smoothing=0.0, position_weights=w)
    per = F.cross_entropy(logits[mask], target[mask], reduction="none")
    ww = w[mask.nonzero()[:, 1]]
    assert torch.allclose(heavy.gt_loss(logits, target, mask), (per * ww).sum() / ww.sum())
    assert heavy.loss_weight(mask) == pytest.approx(float(ww.sum()))
    fused, gt, dist = heavy.student_loss(logits, teacher, target, mask, lam=0.3)
    assert torch.allclose(gt, heavy.gt_loss(logits, target, mask), atol=1e-6)
    assert torch.allclose(dist, heavy.dist_loss(logits, teacher, mask), atol=1e-6)
    assert torch.allclose(fused, 0.3 * gt + 0.7 * dist, atol=1e-6)


@pytest.mark.parametrize("order", ["joint", "first", "last"])
def test_trailing_positions_draw_their_own_ids_in_their_order(order):
    """A motionvq clip: the last position takes ids from the last 3 of the vocabulary only, the others never;
    `first` decodes it at step 0, `last` at the final step, joint whenever its confidence says."""
    model = tiny_masked(tokens=16, codebook=11)
    s = MaskGITSampler(steps=6, trailing=1, trailing_order=order, trailing_vocab=3)
    seen = []
    out = s(model, torch.arange(3) % 3, 2, torch.Generator().manual_seed(0),
            callback=lambda k, t: seen.append((t[:, -1] != model.mask_id).clone()))
    assert (out[:, -1] >= 8).all() and (out[:, :-1] < 8).all()
    if order == "first":
        assert seen[0].all()
    if order == "last":
        assert not any(d.any() for d in seen[:-1]) and seen[-1].all()
    plain = MaskGITSampler(steps=6)
    assert [s.masked_before(k, 16) for k in range(6)] == [plain.masked_before(k, 16) for k in range(6)]
    assert s.flops(model, 2) == plain.flops(model, 2)
    assert ("motion_order" in s.settings()) == (order != "joint")
    from elt.engine.run import settings_tag
    assert (f"_motion{order}" in settings_tag(s.settings(), 10, 0)) == (order != "joint")  # in output names too


def test_trailing_temperature_draws_the_motion_token_alone_at_its_own_temperature():
    """Decoded last, the motion token sees everything else; its temperature changes it alone (the other
    tokens are the same draws), and near zero it is the argmax of its own ids given the rest."""
    model = tiny_masked(tokens=16, codebook=11)
    labels = torch.arange(6) % 3
    draw = lambda **kw: MaskGITSampler(steps=6, trailing=1, trailing_order="last", trailing_vocab=3, **kw)(  # noqa: E731
        model, labels, 2, torch.Generator().manual_seed(0))
    base, cold = draw(), draw(trailing_temperature=1e-6)
    assert torch.equal(base[:, :-1], cold[:, :-1])
    given = cold.clone()
    given[:, -1] = model.mask_id
    logits = MaskGITSampler(steps=6).logits(model, given, labels, 2)[:, -1, -3:]
    assert torch.equal(cold[:, -1], logits.argmax(-1) + 8)
    hot = torch.cat([MaskGITSampler(steps=2, trailing=1, trailing_order="last", trailing_vocab=3,
                                    trailing_temperature=1e4)(model, labels, 2, torch.Generator().manual_seed(k))[:, -1]
                     for k in range(40)])
    assert set(hot.tolist()) == {8, 9, 10} and torch.bincount(hot - 8).min() > 40  # ~uniform: 80 of each expected
    s = MaskGITSampler(trailing=1, trailing_temperature=1.0)
    from elt.engine.run import settings_tag
    assert s.settings()["motion_temperature"] == 1.0 and "_mtemp1" in settings_tag(s.settings(), 10, 0)
    with pytest.raises(ValueError, match="trailing_temperature"):
        MaskGITSampler(trailing_temperature=1.0)
    with pytest.raises(ValueError, match="trailing_temperature"):
        MaskGITSampler(trailing=1, trailing_temperature=0.0)


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="steps"):
        MaskGITSampler(steps=0)
    with pytest.raises(ValueError, match="guidance"):
        MaskGITSampler(guidance=-1)
    with pytest.raises(ValueError, match="trailing_order"):
        MaskGITSampler(trailing=1, trailing_order="middle")
    with pytest.raises(ValueError, match="trailing"):
        MaskGITSampler(trailing_vocab=3)


def test_categorical_draws_follow_the_softmax():
    from elt.masked.sampler import categorical

    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0], [0.0, 0.0, 0.0, 5.0]])
    draws = categorical(logits.repeat(20000, 1), torch.Generator().manual_seed(0)).view(20000, 2)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=4).float() / 20000
        assert torch.allclose(freq, logits[row].softmax(-1), atol=0.015), freq


# ---- MaskGIT's BERT layout (model.arch=bert) ----

def test_bert_layout_post_norm_embedding_norm_and_tied_head():
    import torch.nn.functional as F

    from conftest import tiny_masked
    from elt.core.layers import PostNormBlock

    m = tiny_masked(arch="bert")
    assert all(isinstance(b, PostNormBlock) for b in m.stack.layers) and not hasattr(m, "out")
    tokens, labels = torch.randint(0, 11, (2, 9)), torch.tensor([0, 2])
    h, _ = m.embed(tokens, labels)
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)  # LayerNorm on the embeddings
    out = m.forward_exits(tokens, labels, loops=3)[3]
    x = h
    for _ in range(3):
        for layer in m.stack.layers:  # the block: f_1 then f_2
            x = layer(x)
        torch.testing.assert_close(x.std(-1, unbiased=False), torch.ones(2, 10), atol=1e-3, rtol=0)  # post-norm
    want = m.norm(F.gelu(m.dense(x[:, 1:]))) @ m.token_emb.weight[:11].t() + m.out_bias  # logits = h·Eᵀ + b
    torch.testing.assert_close(out, want)
    out.sum().backward()  # the head is tied: the code embeddings get its gradient even for unused ids
    unused = sorted(set(range(11)) - set(tokens.flatten().tolist()))
    assert unused and m.token_emb.weight.grad[unused].abs().sum() > 0


def test_bert_is_a_masked_only_choice():
    from elt.config import ConfigError, apply_overrides
    from elt.presets import get_preset

    assert get_preset("maskgit-L-8Nx3L").model.arch == "bert" and get_preset("ucf101-magvit-6Nx4L").model.arch == "bert"
    assert get_preset("fmnist-maskgit").model.arch == "bert"
    with pytest.raises(ConfigError, match="model.arch"):
        apply_overrides(get_preset("fmnist-dit"), ["model.arch=bert"]).validate()
    with pytest.raises(ConfigError, match="model.arch"):
        apply_overrides(get_preset("fmnist-maskgit"), ["model.arch=postnorm"]).validate()
