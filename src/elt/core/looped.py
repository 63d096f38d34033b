"""The looped core of ELT, framework-agnostic.

`LoopedStack` holds N unique layers g = f_N ∘ … ∘ f_1 and applies the whole block L times:
F_(N,L)(x) = g^L(x), order f1..fN f1..fN … (the paper's looped model). It can hand back the hidden state after
chosen intermediate loops ("exits") from the same forward pass — what ILSD needs.

`LoopedModel` is the shape every framework's network takes: embed → looped stack → one head
shared by every exit. Frameworks subclass it and define `embed` and `head`; the loop lives here
only. Conditioning returned by `embed` is passed to every layer at every loop and to the head.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LoopedStack(nn.Module):
    def __init__(self, layers: Iterable[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def unique_layers(self) -> int:
        return len(self.layers)

    def compile_layers(self, **compile_kwargs) -> None:
        """torch.compile each layer in place (state-dict keys unchanged). The loop stays in Python,
        so one compiled graph serves every layer, every loop and every L: no recompilation when the
        loop count or the exits change."""
        for layer in self.layers:
            layer.compile(**compile_kwargs)

    def block(self, h: torch.Tensor, **cond) -> torch.Tensor:
        """One loop: g(h) = f_N(… f_1(h))."""
        for layer in self.layers:
            h = layer(h, **cond)
        return h

    def forward(self, h: torch.Tensor, loops: int, exits: Iterable[int] = (), **cond) -> dict[int, torch.Tensor]:
        """Run `loops` repetitions of the block; return {loop: hidden state} for `exits` and `loops`."""
        check_loops(loops)
        wanted = set(exits) | {loops}
        bad = [e for e in wanted if not 1 <= e <= loops]
        if bad:
            raise ValueError(f"exit loops {sorted(bad)} are outside 1..{loops}; pick exits within the loop count")
        states = {}
        for loop in range(1, loops + 1):
            h = self.block(h, **cond)
            if loop in wanted:
                states[loop] = h
        return states


class LoopedModel(nn.Module):
    """embed(*inputs) → (h, cond); LoopedStack; head(h, **cond) at every requested exit."""

    stack: LoopedStack

    def embed(self, *inputs) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def head(self, h: torch.Tensor, **cond) -> torch.Tensor:
        raise NotImplementedError

    def forward_exits(self, *inputs, loops: int, exits: Iterable[int] = (), **head_kw) -> dict[int, torch.Tensor]:
        """Outputs after each loop in `exits` and after `loops`, all from one forward pass.
        `head_kw` goes to the head only (e.g. which positions to decode)."""
        h, cond = self.embed(*inputs)
        states = self.stack(h, loops, exits, **cond)
        return {loop: self.head(s, **cond, **head_kw) for loop, s in states.items()}

    def forward(self, *inputs, loops: int, **head_kw) -> torch.Tensor:
        return self.forward_exits(*inputs, loops=loops, **head_kw)[loops]

    @torch.no_grad()
    def forward_groups(self, *inputs, loops: list[int], **head_kw) -> torch.Tensor:
        """The batch holds len(loops) equal groups back to back (e.g. guidance's conditional and unconditional
        halves); group g runs loops[g] loops. The groups share the loops they have in common — each row runs
        exactly its own count, and the shallower groups' rows leave the batch once they are done — so the
        compute is that of each group at its own L. Every group's output equals a forward pass at its L.
        Conditioning and head arguments must be batch-first."""
        for L in loops:
            check_loops(L)
        h, cond = self.embed(*inputs)
        b, groups = h.shape[0], len(loops)
        if b % groups:
            raise ValueError(f"batch {b} is not {groups} equal groups")
        n = b // groups
        take = lambda d, idx: {k: v[idx] if torch.is_tensor(v) and v.shape[:1] == (b,) else v for k, v in d.items()}  # noqa: E731
        outs: list[torch.Tensor | None] = [None] * groups
        active, done = list(range(groups)), 0
        for g in sorted(range(groups), key=lambda g: loops[g]):
            rows = torch.cat([torch.arange(k * n, (k + 1) * n, device=h.device) for k in active])
            c = take(cond, rows)
            x = h[rows]
            for _ in range(loops[g] - done):
                x = self.stack.block(x, **c)
            h = h.index_copy(0, rows, x)
            done = loops[g]
            mine = torch.arange(g * n, (g + 1) * n, device=h.device)
            outs[g] = self.head(h[mine], **take(cond, mine), **take(head_kw, mine))
            active.remove(g)
        return torch.cat(outs)

    @torch.no_grad()
    def forward_adaptive(self, *inputs, min_loops: int, max_loops: int, threshold: float, change,
                         groups: int = 1, **head_kw):
        """Adaptive halting: loop each example until `change(prev_out, out)` (one value per example) is at
        most `threshold`, within [min_loops, max_loops] (the first possible halt is loop
        max(min_loops, 2): a change needs two outputs). The head runs after every loop from
        min_loops − 1 on, and only the examples still looping go through the next loop.
        The batch holds `groups` copies of each example back to back (e.g. guidance's conditional and
        unconditional halves): a copy stops when all copies of its example have converged.
        Conditioning and head arguments must be batch-first. Returns (outputs, loops used, heads
        run), the last two per example."""
        check_loops(min_loops)
        check_loops(max_loops)
        h, cond = self.embed(*inputs)
        b = h.shape[0]
        if b % groups:
            raise ValueError(f"batch {b} is not {groups} equal groups")
        n = b // groups
        take = lambda d, idx: {k: v[idx] if torch.is_tensor(v) and v.shape[:1] == (b,) else v for k, v in d.items()}  # noqa: E731
        active = torch.arange(n, device=h.device)  # examples still looping
        used = torch.full((n,), max_loops, dtype=torch.long, device=h.device)
        heads = torch.zeros(n, dtype=torch.long, device=h.device)
        out = last = None  # last: the head's output for the looping rows at the previous loop
        for loop in range(1, max_loops + 1):
            rows = torch.cat([active + g * n for g in range(groups)])
            c = take(cond, rows)
            x = self.stack.block(h[rows], **c)
            h = h.index_copy(0, rows, x)
            if loop < min_loops - 1:
                continue  # no halt possible before min_loops: no head needed yet
            y = self.head(x, **c, **take(head_kw, rows))
            out = y.new_zeros((b, *y.shape[1:])) if out is None else out
            out.index_copy_(0, rows, y)
            heads[active] += 1
            if last is not None and min_loops <= loop < max_loops:
                delta = change(last, y).view(groups, -1).amax(0)  # an example: the largest over its copies
                done = delta <= threshold
                used[active[done]] = loop
                active = active[~done]
                if active.numel() == 0:
                    break
                y = y.view(groups, -1, *y.shape[1:])[:, ~done].flatten(0, 1)
            last = y
        return out, used, heads


def check_loops(loops) -> None:
    if isinstance(loops, bool) or not isinstance(loops, int) or loops < 1:
        raise ValueError(f"loop count must be an integer >= 1, got {loops!r}")
