"""Fast paths against the plain ones: compiled block vs eager, head on chosen positions vs all,
analytic FLOPs vs torch's FLOP counter, bf16 tokenizer training, and `elt bench`'s report."""
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_masked
from elt.engine.devices import native_bf16, resolve_precision
from elt.masked import MaskedFramework, MaskGITSampler


def _counted_flops(fn) -> int:
    # The math SDPA backend decomposes attention into matmuls the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("loops", [1, 3])
def test_analytic_forward_flops_equal_torch_flop_counter(loops):
    model = tiny_masked(tokens=16)
    x, y = torch.randint(0, 11, (4, 16)), torch.tensor([0, 1, 2, 0])
    assert _counted_flops(lambda: model(x, y, loops=loops)) == 4 * model.flops(loops)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_analytic_sampling_flops_equal_torch_flop_counter(guidance):
    model = tiny_masked(tokens=16)
    sampler = MaskGITSampler(steps=5, guidance=guidance)
    labels = torch.tensor([0, 1, 2])
    counted = _counted_flops(lambda: sampler(model, labels, [1, 3, 2, 2, 1], torch.Generator().manual_seed(0)))
    assert counted == pytest.approx(3 * sampler.flops(model, [1, 3, 2, 2, 1]), rel=1e-9)


def test_head_at_positions_equals_full_head_indexed():
    model = tiny_masked(tokens=16)
    x, y = torch.randint(0, 11, (3, 16)), torch.tensor([0, 1, 2])
    positions = torch.rand(3, 16) < 0.5
    full = model(x, y, loops=2)
    assert torch.allclose(model(x, y, loops=2, positions=positions), full[positions], atol=1e-6)
    fw = MaskedFramework(11, 3)  # the losses give the same value on either form
    target = torch.randint(0, 11, (3, 16))
    assert torch.allclose(fw.gt_loss(full, target, positions),
                          fw.gt_loss(model(x, y, loops=2, positions=positions), target, positions), atol=1e-6)


def test_head_at_index_positions_equals_full_head_gathered():
    model = tiny_masked(tokens=16)
    x, y = torch.randint(0, 11, (3, 16)), torch.tensor([0, 1, 2])
    where = torch.stack([torch.randperm(16)[:5].sort().values for _ in range(3)])
    full = model(x, y, loops=2)
    assert torch.allclose(model(x, y, loops=2, positions=where), full.gather(1, where[..., None].expand(-1, -1, 11)),
                          atol=1e-6)


def test_cpu_bf16_attention_path_matches_sdpa():
    from elt.core.layers import attention, cpu_bf16

    q, k, v = (torch.randn(2, 4, 10, 8, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert not cpu_bf16(q) and torch.equal(attention(q, k, v), ref)  # fp32: SDPA itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16(q)
        out = attention(q, k, v)  # bf16 matmuls, softmax in fp32
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=3e-2)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_compiled_block_matches_eager_and_never_recompiles_for_new_loop_counts():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_masked(tokens=16)
    x, y = torch.randint(0, 11, (4, 16)), torch.tensor([0, 1, 2, 0])
    eager = {L: model.forward_exits(x, y, loops=L, exits=range(1, L)) for L in (1, 2, 4)}
    model.stack.compile_layers()
    compiled = {L: model.forward_exits(x, y, loops=L, exits=range(1, L)) for L in (1, 2, 4)}
    for L in eager:
        for exit_loop, out in eager[L].items():
            assert torch.allclose(compiled[L][exit_loop], out, atol=1e-5)
    # one graph for both unique layers, every loop, every L and every set of exits
    assert counters["stats"]["unique_graphs"] == 1
    assert set(model.state_dict()) == set(tiny_masked(tokens=16).state_dict())  # keys unchanged


def test_precision_auto_resolves_to_a_concrete_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"


def test_bf16_tokenizer_training_keeps_the_quantiser_in_fp32():
    from elt.tokenizers import VQVAE, train_vqvae

    images = (torch.rand(64, 8, 8, 1) * 255).to(torch.uint8).numpy()
    vq = train_vqvae(VQVAE(8, 1, 16, 4, 16, 1), images, steps=5, batch_size=16, progress=False, bf16=True)
    assert vq.quantizer.codebook.dtype == torch.float32 and torch.isfinite(vq.quantizer.codebook).all()
    ids = vq.encode(torch.rand(2, 1, 8, 8))
    assert ids.shape == (2, 16) and ids.max() < 16


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["digits-maskgit-2Nx4L", "digits-dit-2Nx4L"])
def test_bench_quick_writes_every_key(tmp_path, preset):
    from elt.apps.cli import main

    out = tmp_path / "bench.json"
    assert main(["--quiet", "bench", "--quick", "--preset", preset, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("ilsd_over_vanilla_step", "sampling_seconds_by_loops", "looped_over_flat_inference_throughput",
                "gemm_peak_gflops", "train_gflops_per_s", "mfu", "peak_memory_bytes", "machine"):
        assert key in r
    assert sorted(r["sampling_seconds_by_loops"], key=int) == ["1", "2", "3", "4"]
    assert set(r["looped_over_flat_inference_throughput"]) == {"1", "8", "64"}
    assert r["peak_memory_bytes"]["train"] > 0 and r["peak_memory_bytes"]["sampling"] > 0
    assert 0 < r["mfu"] < 1.5 and r["ilsd_over_vanilla_step"] > 0


@pytest.mark.parametrize("framework", ["masked", "diffusion"])
def test_guidance_at_fewer_loops_costs_what_the_flop_counter_counts(framework):
    """GFLOPs count both halves of guidance as run: the conditional half at the step's L, the unconditional
    half at --guidance-loops; the analytic count equals torch's FLOP counter."""
    from conftest import tiny_dit
    from elt.diffusion import DiffusionSampler, LogSNRSchedule

    labels = torch.tensor([0, 1, 2])
    if framework == "masked":
        model = tiny_masked(tokens=16)
        make = lambda k: MaskGITSampler(steps=4, guidance=2.0, guidance_loops=k)  # noqa: E731
    else:
        model = tiny_dit()
        make = lambda k: DiffusionSampler(LogSNRSchedule(), steps=4, guidance=2.0, guidance_loops=k)  # noqa: E731
    full, fewer = make(None), make(1)
    counted = _counted_flops(lambda: fewer(model, labels, 3, torch.Generator().manual_seed(0)))
    assert counted == pytest.approx(3 * fewer.flops(model, 3), rel=1e-9)
    unguided = type(full)(**{**vars(full), "guidance": 1.0})
    assert fewer.flops(model, 3) < full.flops(model, 3) == pytest.approx(2 * unguided.flops(model, 3))
    assert fewer.settings()["guidance_loops"] == 1 and "guidance_loops" not in full.settings()
    with pytest.raises(ValueError, match="--guidance-loops 4 is above the 3 loops"):
        make(4)(model, labels, 3, torch.Generator().manual_seed(0))
