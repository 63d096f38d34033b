"""ELT invariants of the looped core."""
import pytest
import torch
from torch import nn

from conftest import tiny_masked
from elt.core.looped import LoopedStack


def test_parameters_do_not_depend_on_loops():
    model = tiny_masked()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 11, (2, 9))
    y = torch.tensor([0, 1])
    for loops in (1, 3, 7):
        model(x, y, loops=loops)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # N·L layers of compute, N layers of parameters: a 2N model has 2 blocks whatever L is
    assert len(model.stack.layers) == 2


def _network(kind: str):
    """One of the three networks with the inputs of one forward pass: the masked transformer (pre-norm, and
    MaskGIT's BERT layout) on token ids and classes, the looped DiT on latents, times and classes."""
    from conftest import tiny_dit

    if kind == "dit":
        return tiny_dit(), (torch.randn(3, 2, 8, 8), torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0, 1, 3]))
    return tiny_masked(arch=kind), (torch.randint(0, 12, (3, 9)), torch.tensor([0, 1, 3]))


@pytest.mark.parametrize("kind", ["prenorm", "bert", "dit"])
@pytest.mark.parametrize("lmax", [3, 5])
def test_exit_at_loop_l_equals_forward_with_l_loops(kind, lmax):
    """ELT's invariant: the output at loop l of an Lmax forward pass equals a forward pass run with L = l."""
    model, inputs = _network(kind)
    outs = model.forward_exits(*inputs, loops=lmax, exits=range(1, lmax))
    assert sorted(outs) == list(range(1, lmax + 1))
    for loop in range(1, lmax + 1):
        assert torch.allclose(outs[loop], model(*inputs, loops=loop), atol=1e-6, rtol=0)
    assert not torch.allclose(outs[1], outs[lmax])  # the loops do something


def test_layer_order_is_whole_block_repeated():
    calls = []

    class Tag(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, h):
            calls.append(self.i)
            return h + 1

    stack = LoopedStack([Tag(1), Tag(2), Tag(3)])
    out = stack(torch.zeros(1), loops=2, exits=[1])
    assert calls == [1, 2, 3, 1, 2, 3]  # f1 f2 f3 f1 f2 f3, not f1 f1 f2 f2 ...
    assert out[1].item() == 3 and out[2].item() == 6


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_loop_counts_are_rejected(bad):
    model = tiny_masked()
    with pytest.raises(ValueError, match="loop count"):
        model(torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, dtype=torch.long), loops=bad)


def test_exit_beyond_loops_is_rejected():
    stack = LoopedStack([nn.Identity()])
    with pytest.raises(ValueError, match="outside"):
        stack(torch.zeros(1), loops=2, exits=[3])


def test_batch_equals_single():
    model = tiny_masked()
    x = torch.randint(0, 12, (4, 9))
    y = torch.tensor([0, 1, 2, 3])
    batch = model(x, y, loops=3)
    single = torch.cat([model(x[i:i + 1], y[i:i + 1], loops=3) for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_forward_regression_values():
    """Fixed seed → fixed output slice (guards against silent changes of the network)."""
    model = tiny_masked()
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, 12, (2, 9), generator=g)
    out = model(x, torch.tensor([1, 3]), loops=2)
    assert out.shape == (2, 9, 11)
    expected = torch.tensor(REGRESSION_SLICE)
    assert torch.allclose(out[0, :2, :4], expected, atol=1e-4), out[0, :2, :4].tolist()


REGRESSION_SLICE = [[0.11141, -0.01036, -0.07943, -0.0916], [0.04661, 0.03909, 0.06855, -0.03687]]


def test_flops_linear_in_loops():
    model = tiny_masked()
    f1, f2, f4 = model.flops(1), model.flops(2), model.flops(4)
    assert f4 - f2 == 2 * (f2 - f1)


@pytest.mark.parametrize("kind", ["prenorm", "bert", "dit"])
@pytest.mark.parametrize("loops", [[3, 1], [2, 2], [1, 4]])
def test_groups_at_their_own_loop_counts_equal_separate_forwards(kind, loops):
    """Guidance at fewer loops: one batch whose halves run different loop counts gives each half's own
    forward pass (the halves share the loops they have in common, then the deeper one goes on alone)."""
    model, inputs = _network(kind)
    first, second = _network(kind)[1], tuple(x.flip(0) for x in inputs)  # two different halves
    both = tuple(torch.cat([a, b]) for a, b in zip(first, second))
    got = model.forward_groups(*both, loops=loops)
    want = torch.cat([model(*first, loops=loops[0]), model(*second, loops=loops[1])])
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
