"""elt against MaskGIT's own code (Google's JAX/Flax `maskgit` package on PyPI): the BERT-layout masked
network against `nets/maskgit_transformer.py` and the VQGAN port against `nets/vqgan_tokenizer.py`,
with the same random weights mapped into both; the decoding schedule against `libml/parallel_decode.py`.

MaskGIT keeps codes, classes and [MASK] in one vocabulary (class c is token `codebook + c`, [MASK] the
last row) and decodes over all of it; elt keeps a class embedding apart and decodes the codes only.
The map between the two is exact, so logits must agree to float precision — and an ELT N×L model must
equal MaskGIT's transformer of depth N·L whose layer i holds unique layer i mod N.

The one declared difference: elt's GELU is exact (erf), MaskGIT's is `jax.nn.gelu`'s tanh
approximation; the comparison runs the reference with the exact GELU, and a second check bounds what
the approximation changes. Needs the `reference` extra (jax, flax, maskgit: `make test-reference`);
skipped elsewhere.
"""
import functools
import math

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="the reference checks need the reference extra: make test-reference")
pytest.importorskip("flax.linen")
maskgit_transformer = pytest.importorskip("maskgit.nets.maskgit_transformer")

from elt.masked.model import MaskedTransformer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # flax: SelfAttention's rename

K, T, C, D, H, N = 16, 9, 3, 32, 4, 2  # codebook, tokens, classes, width, heads, unique layers


def _ours(seed: int = 0) -> MaskedTransformer:
    torch.manual_seed(seed)
    net = MaskedTransformer(K, T, C, width=D, heads=H, unique_layers=N, arch="bert").eval()
    with torch.no_grad():
        for p in net.parameters():  # every weight random, LayerNorms and biases included
            p.add_(torch.randn_like(p) * 0.1)
    return net


def _t(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().numpy()


def _reference_params(net: MaskedTransformer, loops: int) -> dict:
    """Flax parameters of MaskGIT's Transformer (depth N·loops) holding elt's weights."""
    vocab_rows = torch.cat([net.token_emb.weight[:K], net.class_emb.weight[:C], net.token_emb.weight[K:K + 1]])
    p = {"Embed_0": {"word_embeddings": {"embedding": _t(vocab_rows)},
                     "position_embeddings": {"embedding": _t(net.pos_emb[0])},
                     "embeddings_ln": {"scale": _t(net.emb_norm.weight), "bias": _t(net.emb_norm.bias)}}}
    for j in range(N * loops):
        b = net.stack.layers[j % N]
        wq, wk, wv = b.attn.qkv.weight.chunk(3)
        bq, bk, bv = b.attn.qkv.bias.chunk(3)
        def heads(w, bias):  # Flax's DenseGeneral: kernel (D, heads, head width)
            return {"kernel": _t(w.t().reshape(D, H, D // H)), "bias": _t(bias.reshape(H, D // H))}

        attn = {"query": heads(wq, bq), "key": heads(wk, bk), "value": heads(wv, bv),
                "out": {"kernel": _t(b.attn.proj.weight.t().reshape(H, D // H, D)), "bias": _t(b.attn.proj.bias)}}
        p[f"TransformerLayer_{j}"] = {
            "Attention_0": {"self_attention": attn,
                            "attention_output_ln": {"scale": _t(b.norm1.weight), "bias": _t(b.norm1.bias)}},
            "Mlp_0": {"intermediate_output": {"kernel": _t(b.mlp.fc1.weight.t()), "bias": _t(b.mlp.fc1.bias)},
                      "layer_output": {"kernel": _t(b.mlp.fc2.weight.t()), "bias": _t(b.mlp.fc2.bias)},
                      "layer_output_ln": {"scale": _t(b.norm2.weight), "bias": _t(b.norm2.bias)}}}
    mlm_bias = torch.cat([net.out_bias, torch.zeros(C + 1)])  # class and [MASK] logits are never read
    p["MlmLayer_0"] = {"mlm_dense": {"kernel": _t(net.dense.weight.t()), "bias": _t(net.dense.bias)},
                       "mlm_ln": {"scale": _t(net.norm.weight), "bias": _t(net.norm.bias)},
                       "mlm_bias": {"bias": _t(mlm_bias)}}
    return p


def _reference_logits(net, tokens, labels, loops, exact_gelu=True) -> np.ndarray:
    model = maskgit_transformer.Transformer(vocab_size=K + C + 1, hidden_size=D, num_hidden_layers=N * loops,
                                            num_attention_heads=H, intermediate_size=4 * D, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0, max_position_embeddings=T + 1)
    ids = np.where(tokens.numpy() == K, K + C, tokens.numpy())  # [MASK]: MaskGIT's last vocabulary row (id -1)
    ids = np.concatenate([labels.numpy()[:, None] + K, ids], axis=1).astype(np.int32)  # class c: token K + c
    params = {"params": _reference_params(net, loops)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)  # every weight mapped
    gelu = jax.nn.gelu
    try:
        if exact_gelu:
            jax.nn.gelu = functools.partial(gelu, approximate=False)
        logits = model.apply(params, ids, deterministic=True)
    finally:
        jax.nn.gelu = gelu
    return np.asarray(logits)[:, 1:, :K]  # MaskGIT keeps the code logits and drops the class position


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, K, (batch, T), generator=g)
    tokens[torch.rand(batch, T, generator=g) < 0.5] = K  # half masked
    return tokens, torch.randint(0, C, (batch,), generator=g)


@pytest.mark.parametrize("loops", [1, 3])
def test_bert_layout_equals_maskgit_transformer_of_depth_n_times_l(loops):
    net = _ours()
    tokens, labels = _inputs()
    with torch.no_grad():
        ours = net(tokens, labels, loops=loops).numpy()
    theirs = _reference_logits(net, tokens, labels, loops)
    assert ours.shape == theirs.shape == (3, T, K) and np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-4)


def test_the_tanh_gelu_of_maskgit_is_the_only_difference_and_small():
    net = _ours()
    tokens, labels = _inputs()
    with torch.no_grad():
        ours = net(tokens, labels, loops=2).numpy()
    tanh = _reference_logits(net, tokens, labels, 2, exact_gelu=False)
    gap = np.abs(ours - tanh).max()
    assert 1e-6 < gap < 1e-2 * np.abs(tanh).max()  # visible to the check above, small against the logits


# ---- the MaskGIT VQGAN tokenizer (elt.tokenizers.maskgit_vqgan) against maskgit/nets/vqgan_tokenizer.py ----

def _vqgan_pair(blocks: int = 2):
    from maskgit.configs import vqgan_config
    from maskgit.nets import vqgan_tokenizer

    from elt.tokenizers.maskgit_vqgan import MaskGITVQGAN

    torch.manual_seed(0)
    ours = MaskGITVQGAN(image_size=16, hidden=32, mult=(1, 2), blocks=blocks, z=8, codebook_size=16).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cfg = vqgan_config.get_config()
    v = cfg.vqvae
    v.filters, v.channel_multipliers, v.num_res_blocks, v.embedding_dim, v.codebook_size = 32, [1, 2], blocks, 8, 16
    return ours, vqgan_tokenizer.VQVAE(config=cfg, train=False)


def _vqgan_params(ours) -> dict:
    """Flax parameters of MaskGIT's VQVAE holding the port's weights (Flax names its layers in call order)."""
    def conv(m):  # Flax: kernel (kh, kw, in, out)
        kernel = {"kernel": _t(m.weight.permute(2, 3, 1, 0))}
        return kernel if m.bias is None else {**kernel, "bias": _t(m.bias)}

    def norm(m):
        return {"scale": _t(m.weight), "bias": _t(m.bias)}

    def res(b):
        p = {"GroupNorm_0": norm(b.norm1), "Conv_0": conv(b.conv1),
             "GroupNorm_1": norm(b.norm2), "Conv_1": conv(b.conv2)}
        return {**p, "Conv_2": conv(b.nin_shortcut)} if b.changes else p

    e, d = ours.encoder, ours.decoder
    enc_blocks = [b for level in e.down for b in level.block] + list(e.mid)
    enc = {"Conv_0": conv(e.conv_in), **{f"ResBlock_{k}": res(b) for k, b in enumerate(enc_blocks)},
           "GroupNorm_0": norm(e.norm_out), "Conv_1": conv(e.conv_out)}
    levels = list(reversed(d.up))  # the decoder runs from the coarsest level
    dec_blocks = list(d.mid) + [b for level in levels for b in level.block]
    ups = [level.upsample_conv for level in levels if level.up]
    dec = {"Conv_0": conv(d.conv_in), **{f"ResBlock_{k}": res(b) for k, b in enumerate(dec_blocks)},
           **{f"Conv_{1 + k}": conv(c) for k, c in enumerate(ups)}, "GroupNorm_0": norm(d.norm_out),
           f"Conv_{1 + len(ups)}": conv(d.conv_out)}
    return {"params": {"encoder": enc, "decoder": dec, "quantizer": {"codebook": _t(ours.quantize.embedding.weight)}}}


def test_maskgit_vqgan_port_equals_maskgit_jax_tokenizer():
    ours, ref = _vqgan_pair()
    params = _vqgan_params(ours)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x = images.permute(0, 2, 3, 1).numpy()  # Flax: NHWC
    for method, arg in ((ref.encode_to_indices, x), (ref.decode, np.zeros((2, 8, 8, 8), np.float32))):
        shapes = jax.eval_shape(lambda m=method, a=arg: ref.init(jax.random.PRNGKey(0), a, method=m))["params"]
        part = {k: params["params"][k] for k in shapes}
        assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(part)  # every weight mapped
    with torch.no_grad():
        feats = ours.encoder(images)
        ids = ours.encode(images)
        z = ours.quantize.embedding(ids).view(2, 8, 8, -1).permute(0, 3, 1, 2)
        recon = ours.decoder(z)
    their_feats = np.asarray(ref.apply(params, x, method=lambda m, a: m.encoder(a)))
    np.testing.assert_allclose(feats.permute(0, 2, 3, 1).numpy(), their_feats, atol=1e-4, rtol=1e-4)
    assert np.abs(their_feats).max() > 0.1
    their_ids = np.asarray(ref.apply(params, x, method=ref.encode_to_indices)).reshape(2, -1)
    assert (ids.numpy() == their_ids).all() and len(np.unique(their_ids)) > 3
    their_recon = np.asarray(ref.apply(params, their_ids.reshape(2, 8, 8), method=ref.decode_from_indices))
    np.testing.assert_allclose(recon.permute(0, 2, 3, 1).numpy(), their_recon, atol=1e-4, rtol=1e-4)
    assert np.abs(their_recon).max() > 0.1


# ---- MaskGIT decoding (elt.masked.sampler) against maskgit/libml/parallel_decode.py ----

class _Recorder(torch.nn.Module):
    """A stand-in network with random logits that records how many positions are masked at each step."""

    def __init__(self, num_tokens: int, codebook: int = 8):
        super().__init__()
        self.num_tokens, self.mask_id, self.null_class, self.codebook = num_tokens, codebook, 0, codebook
        self.seen = []

    def forward(self, tokens, labels, loops, positions=None):
        self.seen.append(int((tokens[0] == self.mask_id).sum()))
        shape = positions.shape if positions is not None else tokens.shape
        return torch.randn(*shape, self.codebook)


@pytest.mark.parametrize("tokens, steps", [(49, 8), (256, 12), (16, 12)])
def test_masked_positions_per_step_follow_maskgit_decode(tokens, steps):
    from maskgit.libml import parallel_decode

    from elt.masked.sampler import MaskGITSampler

    theirs = []

    def to_logits(ids):
        theirs.append(int((np.asarray(ids)[0] == -1).sum()))
        return jax.random.normal(jax.random.PRNGKey(len(theirs)), ids.shape + (8,))

    with jax.disable_jit():  # runs the while loop in Python, so the callback sees every step
        parallel_decode.decode(np.full((1, tokens), -1, np.int32), jax.random.PRNGKey(0), to_logits, num_iter=steps,
                               choice_temperature=4.5)
    net = _Recorder(tokens)
    out = MaskGITSampler(steps=steps)(net, torch.zeros(1, dtype=torch.long), 1, torch.Generator().manual_seed(0))
    # the same number of positions masked at the input of every step — except where T·cos(π/2·ratio) is
    # an integer (256·cos(π/3) = 128): MaskGIT's float32 cosine lands a hair below it and floors to 127,
    # elt computes in float64 and keeps 128
    ideal = [tokens * math.cos(math.pi / 2 * (k + 1) / steps) for k in range(steps - 1)]
    on_integer = [False] + [abs(x - round(x)) < 1e-4 for x in ideal]  # step 0 starts all masked
    assert len(net.seen) == len(theirs) == steps
    assert all(abs(a - b) <= 1 if edge else a == b for a, b, edge in zip(net.seen, theirs, on_integer))
    assert sum(a != b for a, b in zip(net.seen, theirs)) <= sum(on_integer)
    assert (out != net.mask_id).all()  # and after the last step every position is decoded, as MaskGIT's output
