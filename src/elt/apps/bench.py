"""`elt bench`: speed and memory of the looped model, measured side by side in one run.

For each preset (default: the CPU demo and its width-256 sibling) it measures, with warm-up,
several repeats and the median:
  - one full training step (corrupt → looped forward with the ILSD exit → loss → backward → clip →
    AdamW → EMA) under ILSD and vanilla, same model, same batches → `ilsd_over_vanilla_step`;
  - MaskGIT sampling of a fixed batch at every L = 1 … Lmax → `sampling_seconds_by_loops`;
  - inference throughput of N×L against the flat N·L-layer model of equal FLOPs, by batch size;
  - training FLOP/s (FLOPs counted analytically, `model.flops`) and MFU against the fp32 / bf16
    GEMM peak measured in the same run;
  - peak memory of a training step and of a sampling call (CUDA allocator stats, or the profiler's
    allocation events on CPU).
"""
from __future__ import annotations

import copy
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass

import torch

from ..config import Config
from ..engine.build import build_framework, build_model, build_objective, build_sampler, nominal_shape, nominal_tokenizer
from ..engine.devices import DistInfo, autocast, resolve_precision
from ..engine.step import TrainState, make_optimizer, train_step, wrap_model
from ..presets import get_preset

DEFAULT_PRESETS = ("fmnist-maskgit-2Nx4L", "fmnist-maskgit-w256-2Nx4L")


@dataclass
class Settings:
    warmup: int = 3
    repeats: int = 20
    throughput_batches: tuple = (1, 8, 64)
    device: str = "cpu"
    sample_budget_s: float = 90.0
    sample_batch: int | None = None  # None: the preset's own sampling batch

    @classmethod
    def quick(cls, device: str = "cpu") -> "Settings":
        """A smoke run: every measurement once or a few times, sampling at a batch of 16."""
        return cls(warmup=1, repeats=3, device=device, sample_budget_s=5.0, sample_batch=16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    """Seconds of each fn per round; rounds run every fn once, in a shuffled order, so that drift and
    noise of a shared machine hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    order = random.Random(0)
    for _ in range(repeats):
        for k in order.sample(list(fns), len(fns)):
            fn = fns[k]
            _sync(device)
            tic = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - tic)
    return times


def interleaved_medians(fns: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    return {k: statistics.median(v) for k, v in interleaved_times(fns, warmup, repeats, device).items()}


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / interleaved_medians({"gemm": lambda: a @ b}, 3, repeats, device)["gemm"] / 1e9


def peak_memory_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated by tensors while `fn` runs (above what was allocated before)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0  # running sum of allocations (+) and frees (−) in time order
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


class _Bench:
    """One preset's model, data shapes and training step, built once."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        _, self.num_classes = nominal_shape(cfg)
        self.tok = nominal_tokenizer(cfg)
        torch.manual_seed(0)
        self.model = self.build(cfg.model.unique_layers)
        self.num_tokens = self.model.num_tokens
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.info = DistInfo(device=device)
        self.fwd = wrap_model(self.model, cfg, self.info)  # as `elt train`: the block compiled once when asked
        self.framework = build_framework(cfg, self.num_classes, self.tok)
        self.optimizer = make_optimizer(self.model, cfg)
        self.precision = resolve_precision(cfg.train.precision, device)

    def build(self, unique_layers: int):
        cfg = copy.deepcopy(self.cfg)
        cfg.model.unique_layers = unique_layers
        return build_model(cfg, self.tok, self.num_classes).to(self.device)

    def train_step(self, objective: str):
        """A closure running `elt train`'s step (engine.step.train_step) on a pool of random training
        data; batches and Lint come from a fixed seed, the step count sits mid-run (λ = ½)."""
        m, t = self.cfg.model, self.cfg.train
        gen = torch.Generator().manual_seed(0)
        pool = 4 * t.batch_size
        state = TrainState(self.cfg, self.model, self.fwd, self.ema, self.optimizer, self.framework,
                           build_objective(self.cfg, objective), self.random_data(pool, gen),
                           torch.randint(0, self.num_classes, (pool,), generator=gen), gen, self.info, t.steps // 2)
        return lambda: train_step(state)

    def random_data(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """A batch of random training data: token ids (masked) or unit-variance latents (diffusion)."""
        if self.cfg.framework == "diffusion":
            return torch.randn((b, *self.tok.latent_shape), generator=gen)
        return torch.randint(0, self.tok.codebook_size, (b, self.num_tokens), generator=gen)

    def sample_fn(self, loops: int, batch: int):
        sampler = build_sampler(self.cfg, self.tok)
        labels = torch.arange(batch, device=self.device) % self.num_classes
        gen = torch.Generator().manual_seed(0)
        mixed = autocast(self.cfg.sample.precision, self.device)  # as `elt sample` runs it

        def run():
            with mixed:
                return sampler(self.ema, labels, loops, gen)
        return run

    def forward_fn(self, model, loops: int, batch: int):
        labels = torch.arange(batch, device=self.device) % self.num_classes
        if self.cfg.framework == "diffusion":
            x = self.random_data(batch, torch.Generator().manual_seed(0)).to(self.device)
            inputs = (x, torch.full((batch,), 0.5, device=self.device), labels)
        else:
            inputs = (torch.full((batch, self.num_tokens), model.mask_id, device=self.device), labels)

        @torch.no_grad()
        def run():
            return model(*inputs, loops=loops)
        return run


def bench_preset(name: str, s: Settings, peaks: dict, log=print) -> dict:
    device = torch.device(s.device)
    cfg = get_preset(name)
    bench = _Bench(cfg, device)
    m, t = cfg.model, cfg.train
    log(f"[{name}] training step, ILSD vs vanilla (batch {t.batch_size}, {bench.precision})")
    rounds = interleaved_times({k: bench.train_step(k) for k in ("ilsd", "vanilla")}, s.warmup, 2 * s.repeats, device)
    steps = {k: statistics.median(v) for k, v in rounds.items()}
    # The ratio is the median of per-round ratios: the two steps of a round ran back to back.
    step_ratio = statistics.median(a / b for a, b in zip(rounds["ilsd"], rounds["vanilla"]))
    # Forward FLOPs × 3 (backward = 2 × forward); ILSD evaluates the head at two exits.
    train_flops = 3 * t.batch_size * bench.model.flops(m.max_loops, heads=2 if m.min_loops < m.max_loops else 1)
    train_gflops = train_flops / steps["ilsd"] / 1e9
    peak = peaks[bench.precision]

    sample_batch = s.sample_batch or cfg.sample.batch_size  # the preset's own sampling batch unless quick
    log(f"[{name}] sampling, batch {sample_batch}, {cfg.sample.steps} steps, L = 1..{m.max_loops}")
    bench.ema.eval()
    fns = {str(L): bench.sample_fn(L, sample_batch) for L in range(1, m.max_loops + 1)}
    # Rounds cost sum over L of a call; slow samplers (diffusion: tens of network passes per call) get
    # fewer rounds, so that this part stays near `sample_budget_s` (at least 3 rounds).
    tic = time.perf_counter()
    fns[str(m.max_loops)]()
    round_s = (time.perf_counter() - tic) * (m.max_loops + 1) / 2
    sample_repeats = max(3, min(s.repeats, int(s.sample_budget_s / max(round_s, 1e-9))))
    sampling = interleaved_medians(fns, 0, sample_repeats, device)

    log(f"[{name}] inference throughput, {m.unique_layers}Nx{m.max_loops}L vs "
        f"{m.unique_layers * m.max_loops}Nx1L, batches {list(s.throughput_batches)}")
    flat = bench.build(m.unique_layers * m.max_loops).eval()
    looped = bench.ema
    throughput, forward_seconds = {}, {}
    for b in s.throughput_batches:
        r = interleaved_medians({"looped": bench.forward_fn(looped, m.max_loops, b),
                                 "flat": bench.forward_fn(flat, 1, b)}, s.warmup, s.repeats, device)
        throughput[str(b)] = r["flat"] / r["looped"]
        forward_seconds[str(b)] = r

    log(f"[{name}] peak memory")
    memory = {"train": peak_memory_bytes(bench.train_step("ilsd"), device),
              "sampling": peak_memory_bytes(bench.sample_fn(m.max_loops, sample_batch), device)}
    lmax = sampling[str(m.max_loops)]
    return {
        "preset": name,
        "settings": {"batch_size": t.batch_size, "precision": bench.precision, "compile": t.compile, "width": m.width,
                     "unique_layers": m.unique_layers, "max_loops": m.max_loops, "min_loops": m.min_loops,
                     "num_tokens": bench.num_tokens, "framework": cfg.framework,
                     "sample_batch": sample_batch, "sample_steps": cfg.sample.steps, "guidance": cfg.sample.guidance,
                     "sample_precision": resolve_precision(cfg.sample.precision, device),
                     "sample_repeats": sample_repeats,
                     "parameters": sum(p.numel() for p in bench.model.parameters())},
        "train_step_seconds": steps,
        "ilsd_over_vanilla_step": step_ratio,
        "train_gflops_per_step": train_flops / 1e9,
        "train_gflops_per_s": train_gflops,
        "mfu": train_gflops / peak,
        "sampling_seconds_by_loops": sampling,
        "sampling_time_over_lmax": {L: v / lmax for L, v in sampling.items()},
        "looped_over_flat_inference_throughput": throughput,
        "forward_seconds_by_batch": forward_seconds,
        "peak_memory_bytes": memory,
    }


def run_bench(presets=DEFAULT_PRESETS, quick: bool = False, device: str = "cpu", log=print) -> dict:
    s = Settings.quick(device) if quick else Settings(device=device)
    dev = torch.device(device)
    log(f"GEMM peak (1024x1024 matmul) on {device}")
    peaks = {"fp32": gemm_peak_gflops(torch.float32, dev), "bf16": gemm_peak_gflops(torch.bfloat16, dev)}
    results = {name: bench_preset(name, s, peaks, log) for name in presets}
    first = results[presets[0]]
    headline = {k: first[k] for k in ("ilsd_over_vanilla_step", "sampling_seconds_by_loops",
                                      "looped_over_flat_inference_throughput", "train_gflops_per_s", "mfu",
                                      "peak_memory_bytes")}
    return {"machine": machine(), "device": device, "quick": quick,
            "settings": {"warmup": s.warmup, "repeats": s.repeats, "statistic": "median",
                         "gemm": "1024x1024 matmul"},
            "gemm_peak_gflops": peaks, "headline_preset": presets[0], **headline, "presets": results}


def format_results(r: dict) -> str:
    lines = [f"machine: {r['machine']['cpu']} ({r['machine']['torch_threads']} threads), torch "
             f"{r['machine']['torch']}, device {r['device']}",
             f"GEMM peak: fp32 {r['gemm_peak_gflops']['fp32']:.0f} GFLOP/s, "
             f"bf16 {r['gemm_peak_gflops']['bf16']:.0f} GFLOP/s"]
    for name, p in r["presets"].items():
        st = p["settings"]
        lines += [
            "",
            f"{name}  (width {st['width']}, {st['unique_layers']}Nx{st['max_loops']}L, batch {st['batch_size']}, "
            f"{st['precision']}, {st['parameters'] / 1e6:.2f}M params)",
            f"  train step       ILSD {p['train_step_seconds']['ilsd'] * 1e3:.1f} ms, vanilla "
            f"{p['train_step_seconds']['vanilla'] * 1e3:.1f} ms  -> ILSD/vanilla {p['ilsd_over_vanilla_step']:.3f}",
            f"  train throughput {p['train_gflops_per_s']:.1f} GFLOP/s  -> MFU {100 * p['mfu']:.1f}%",
            f"  sampling (batch {st['sample_batch']}, {st['sample_steps']} steps, {st.get('sample_precision', 'fp32')}): " + ", ".join(
                f"L={L} {v:.3f}s ({p['sampling_time_over_lmax'][L]:.2f})" for L, v in p["sampling_seconds_by_loops"].items()),
            "  looped/flat inference throughput: " + ", ".join(
                f"batch {b}: {x:.2f}x" for b, x in p["looped_over_flat_inference_throughput"].items()),
            f"  peak memory: train {p['peak_memory_bytes']['train'] / 2**20:.1f} MiB, "
            f"sampling {p['peak_memory_bytes']['sampling'] / 2**20:.1f} MiB",
        ]
    return "\n".join(lines)


def write_json(r: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(r, f, indent=2)
