"""Loop policies beyond the paper: per-step schedules, adaptive exit, the schedule search and the
budget sampler."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_dit, tiny_masked

from elt.apps.cli import main
from elt.diffusion import DiffusionSampler, LogSNRSchedule
from elt.core.loops import (AdaptiveLoops, LoopSchedule, logits_kl_change, quantize, relative_rms_change,
                       schedule_family)
from elt.masked import MaskGITSampler


@pytest.mark.parametrize("text,steps,expected", [
    ("3", 4, [3, 3, 3, 3]),
    ("1,2,3,4", 4, [1, 2, 3, 4]),
    ("ramp:1:4", 4, [1, 2, 3, 4]),
    ("ramp:4:1", 7, [4, 4, 3, 3, 2, 2, 1]),
    ("split:4:1", 4, [4, 4, 1, 1]),
    ("split:4:2:0.25", 8, [4, 4, 2, 2, 2, 2, 2, 2]),
])
def test_schedule_parse_and_resolve(text, steps, expected):
    s = LoopSchedule.parse(text)
    assert s.per_step(steps) == expected
    assert LoopSchedule.parse(s.spec()).per_step(steps) == expected  # spec round-trips


@pytest.mark.parametrize("text", ["0", "ramp:1", "split:4:1:1.5", "a,b", "ramp:0:3"])
def test_bad_schedules_are_refused(text):
    with pytest.raises(ValueError, match="loop"):
        LoopSchedule.parse(text)


def test_list_schedule_needs_one_entry_per_step():
    with pytest.raises(ValueError, match="3 entries for 4 sampling steps"):
        LoopSchedule.parse("1,2,3").per_step(4)


@pytest.mark.parametrize("mean,steps", [(2, 8), (3, 25), (4, 25), (2.5, 12)])
def test_family_has_the_total_loops_of_its_budget(mean, steps):
    family = schedule_family(mean, steps, 1, 6)
    assert set(family) == {"increasing", "decreasing", "front-loaded", "back-loaded"}
    for name, s in family.items():
        per = s.per_step(steps)
        assert sum(per) == round(mean * steps) and 1 <= min(per) and max(per) <= 6
        diffs = np.diff(per)
        if name in ("increasing", "back-loaded"):
            assert (diffs >= 0).all(), per
        else:
            assert (diffs <= 0).all(), per


def test_quantize_is_exact_and_bounded():
    out = quantize([0.3, 5.0, 1.2, 9.9], 10, 1, 4)
    assert sum(out) == 10 and min(out) >= 1 and max(out) <= 4
    with pytest.raises(ValueError, match="cannot stay within"):
        quantize([1, 1], 20, 1, 6)


def _inputs(model, b=6):
    torch.manual_seed(1)
    if hasattr(model, "mask_id"):
        tokens = torch.randint(0, model.mask_id, (b, model.num_tokens))
        return (tokens, torch.arange(b) % 3), {"positions": torch.arange(4).repeat(b, 1)}, logits_kl_change
    x = torch.randn(b, model.in_channels, model.input_size, model.input_size)
    return (x, torch.rand(b), torch.arange(b) % 3), {}, relative_rms_change


@torch.no_grad()
@pytest.mark.parametrize("make", [tiny_masked, tiny_dit])
def test_adaptive_exit_bounds_and_per_example_equivalence(make):
    model = make()
    inputs, kw, change = _inputs(model)
    out, used, heads = model.forward_adaptive(*inputs, min_loops=1, max_loops=4, threshold=0.0, change=change, **kw)
    assert torch.equal(out, model(*inputs, loops=4, **kw)) and used.tolist() == [4] * 6  # never converges
    out, used, heads = model.forward_adaptive(*inputs, min_loops=1, max_loops=4, threshold=1e9, change=change, **kw)
    assert torch.allclose(out, model(*inputs, loops=2, **kw), atol=1e-6)  # first possible exit: loop 2
    assert used.tolist() == [2] * 6 and heads.tolist() == [2] * 6
    # A threshold between the examples' changes: each example's output is a plain forward at its own L.
    delta = change(model(*inputs, loops=2, **kw), model(*inputs, loops=3, **kw))
    out, used, _ = model.forward_adaptive(*inputs, min_loops=2, max_loops=4, threshold=float(delta.median()),
                                          change=change, **kw)
    assert len(set(used.tolist())) > 1
    for i in range(6):
        one = model(*[v[i:i + 1] for v in inputs], loops=int(used[i]), **{k: v[i:i + 1] for k, v in kw.items()})
        assert torch.allclose(out[i:i + 1], one, atol=1e-5)


@torch.no_grad()
def test_adaptive_exit_stops_copies_of_an_example_together():
    model = tiny_dit()
    (x, t, y), _, change = _inputs(model, 4)
    both = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 3)]))
    d = change(model(*both, loops=2), model(*both, loops=3))
    out, used, _ = model.forward_adaptive(*both, min_loops=2, max_loops=4, threshold=float(d.median()),
                                          change=change, groups=2)
    assert used.shape == (4,)
    for i in range(4):  # both copies of example i ran used[i] loops
        ref = model(*[v[[i, i + 4]] for v in both], loops=int(used[i]))
        assert torch.allclose(out[[i, i + 4]], ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["masked", "diffusion"])
def test_samplers_take_schedules_and_adaptive_exit_with_flops(kind):
    if kind == "masked":
        model, sampler = tiny_masked(), MaskGITSampler(steps=4, guidance=2.0)
    else:
        model = tiny_dit()
        sampler = DiffusionSampler(LogSNRSchedule(), steps=4, guidance=2.0, kind="ddim", prediction="v")
    labels = torch.arange(6) % 3
    run = lambda loops: sampler(model, labels, loops, torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.equal(run(LoopSchedule.parse("3,3,3,3")), run(3))
    assert sampler.flops(model, LoopSchedule.parse("1,2,3,4")) < sampler.flops(model, 3)
    assert sampler.flops(model, LoopSchedule.parse("ramp:1:3")) == pytest.approx(sampler.flops(model, 2), rel=0.05)
    policy = AdaptiveLoops(0.0, 1, 3)
    assert torch.equal(run(policy), run(3)) and policy.mean_loops == 3
    policy = AdaptiveLoops(1e9, 1, 3)
    run(policy)
    assert policy.mean_loops == 2
    # Adaptive FLOPs: the layers of the loops run plus a head after each of them.
    assert sampler.flops(model, 2) < sampler.flops(model, policy) < sampler.flops(model, 3)
    with pytest.raises(ValueError, match="has not sampled yet"):
        sampler.flops(model, AdaptiveLoops(0.1, 1, 3))


def test_cli_schedules_budget_and_adaptive_on_digits(masked_run, run_copy, tmp_path, capsys):
    run = run_copy(masked_run)
    assert main(["--quiet", "evaluate", "--run", str(run), "--loops", "1,2,3,4", "--n", "20"]) == 0
    assert main(["--quiet", "schedules", "--run", str(run), "--budgets", "2,3", "--thresholds", "0.001,1",
                 "--n", "20"]) == 0
    text = capsys.readouterr().out
    assert "increasing@2" in text and "budget 2 loops/step" in text
    report = json.loads((run / "anytime.json").read_text())
    assert list(report["loops"]) == ["1", "2", "3", "4"]  # the constant-L table stays
    search = report["schedules"]
    kinds = {p["kind"] for p in search["points"]}
    assert kinds == {"constant", "schedule", "adaptive"}
    for p in search["points"]:
        if p["kind"] == "schedule":
            assert sum(p["per_step"]) == p["budget_loops"] * 4
            same = next(q for q in search["points"] if q["name"] == f"L{p['budget_loops']:g}")
            assert p["gflops_per_sample"] == pytest.approx(same["gflops_per_sample"], rel=0.02)
    adaptive = {p["threshold"]: p for p in search["points"] if p["kind"] == "adaptive"}
    assert adaptive[1.0]["mean_loops"] <= adaptive[0.001]["mean_loops"]
    # the frontier weighs the search's points and the constant-L table; the cheapest point is on it
    everything = {p["name"] for p in search["points"]} | {f"L{L}" for L in report["loops"]}
    assert set(search["frontier"]) <= everything and "L1" in search["frontier"]
    assert [c["budget_loops"] for c in search["comparison"]] == [2, 3]

    # Budget sampling: the best measured schedule that fits, recorded with the samples.
    cheapest = min(p["gflops_per_sample"] for p in search["points"] if p["kind"] != "adaptive")
    out = tmp_path / "b"
    budget = report["loops"]["2"]["gflops_per_sample"] * 1.01
    assert main(["--quiet", "sample", "--run", str(run), "--budget-gflops", str(budget), "--n", "10",
                 "--out", str(out)]) == 0
    settings = str(np.load(out.with_suffix(".npz"))["settings"])
    assert "budget_gflops" in settings and "chosen" in settings
    assert main(["sample", "--run", str(run), "--budget-gflops", str(cheapest / 2), "--n", "4",
                 "--out", str(tmp_path / "x")]) == 2
    assert "raise the budget" in capsys.readouterr().err
    # measurements at other sampling temperatures do not choose for these ones
    assert main(["sample", "--run", str(run), "--budget-gflops", str(budget), "--n", "4", "--out", str(tmp_path / "y"),
                 "--set", "sample.choice_temperature=1"]) == 2
    assert "choice_temperature=4.5 (now 1.0)" in capsys.readouterr().err
    assert main(["--quiet", "sample", "--run", str(run), "--budget-ms", "1e6", "--n", "4",
                 "--out", str(tmp_path / "m")]) == 0
    cache = json.loads((run / "latency.json").read_text())
    (key, table), = cache.items()
    assert "batch 50" in key and len(table) >= 4 and all(v > 0 for v in table.values())
    assert main(["--quiet", "sample", "--run", str(run), "--schedule", "ramp:1:4", "--n", "4",
                 "--out", str(tmp_path / "r")]) == 0
    assert "ramp:1:4" in str(np.load(tmp_path / "r.npz")["settings"])
    assert main(["--quiet", "sample", "--run", str(run), "--adaptive", "0.05", "--n", "4",
                 "--out", str(tmp_path / "a")]) == 0
    assert "mean_loops" in str(np.load(tmp_path / "a.npz")["settings"])
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        main(["sample", "--run", str(run), "--schedule", "ramp:0:2", "--n", "4", "--out", str(tmp_path / "z")])
    assert e.value.code == 2 and "bad loop schedule 'ramp:0:2'" in capsys.readouterr().err


@pytest.mark.parametrize("shared", ["masked_run", "diffusion_run"])
def test_frontier_of_loops_steps_guidance_loops_and_solvers(shared, request, run_copy, tmp_path, capsys):
    """`elt schedules --steps-grid --guidance-loops-grid [--solvers]`: every combination measured with its
    settings recorded, the Pareto frontier of quality against GFLOPs, a plot; a budget picks from it with the
    steps, solver and guidance loops it was measured at."""
    run = run_copy(request.getfixturevalue(shared))
    solvers = ["--solvers", "ddim,dpmpp2m"] if shared == "diffusion_run" else []
    assert main(["--quiet", "schedules", "--run", str(run), "--steps-grid", "2,4", "--loops-grid", "1,3",
                 "--guidance-loops-grid", "1", "--n", "10", *solvers]) == 0
    assert "<- frontier" in capsys.readouterr().out
    report = json.loads((run / "frontier.json").read_text())
    assert (run / "frontier.png").is_file()
    combos = {(p["loops"], p["sample"]["steps"], p["sample"].get("sampler"), p["sample"]["guidance_loops"])
              for p in report["points"]}
    solver_names = ["ddim", "dpmpp2m"] if solvers else [None]
    assert combos == {(L, k, s, g) for L in (1, 3) for k in (2, 4) for s in solver_names for g in (None, 1) if g is None
                      or g < L}
    fd = f"fd_{report['metric_extractor']}"
    by_name = {p["name"]: p for p in report["points"]}
    for name in report["frontier"]:  # nothing cheaper is better
        p = by_name[name]
        assert not any(q[fd] < p[fd] and q["gflops_per_sample"] <= p["gflops_per_sample"] for q in report["points"])
    fewer = next(p for p in report["points"] if p["sample"]["guidance_loops"] == 1)
    full = next(p for p in report["points"] if p["loops"] == fewer["loops"] and p["sample"]["steps"] ==
                fewer["sample"]["steps"] and p["sample"].get("sampler") == fewer["sample"].get("sampler")
                and p["sample"]["guidance_loops"] is None)
    assert fewer["gflops_per_sample"] < full["gflops_per_sample"]  # guidance at fewer loops costs less, as run
    cheapest = min(report["points"], key=lambda p: p["gflops_per_sample"])
    out = tmp_path / "b"
    assert main(["--quiet", "sample", "--run", str(run), "--budget-gflops", str(cheapest["gflops_per_sample"] * 1.0001),
                 "--n", "4", "--out", str(out)]) == 0
    settings = str(np.load(out.with_suffix(".npz"))["settings"])
    assert f"'name': '{cheapest['name']}'" in settings and f"'steps': {cheapest['sample']['steps']}" in settings


def test_frontier_grows_over_calls_of_the_same_settings(masked_run, run_copy):
    """A second `elt schedules --steps-grid` of the same checkpoint, n and seed keeps the first call's points
    (re-measuring only its own, to the same numbers); another n starts afresh."""
    run = run_copy(masked_run)
    base = ["--quiet", "schedules", "--run", str(run), "--loops-grid", "1", "--n", "6"]
    assert main([*base, "--steps-grid", "2"]) == 0
    first = json.loads((run / "frontier.json").read_text())["points"]
    assert main([*base, "--steps-grid", "2,3"]) == 0
    grown = {p["name"]: p for p in json.loads((run / "frontier.json").read_text())["points"]}
    same = ("sample", "gflops_per_sample", "quality")  # its time is measured again
    assert set(grown) == {"L1_K2", "L1_K3"} and all(grown["L1_K2"][k] == first[0][k] for k in same)
    assert main([*base[:-1], "5", "--steps-grid", "3"]) == 0
    assert [p["name"] for p in json.loads((run / "frontier.json").read_text())["points"]] == ["L1_K3"]
