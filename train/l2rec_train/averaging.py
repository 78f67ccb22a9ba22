"""A moving average of a model's parameters, selected and kept in place of the raw weights
of one epoch (stage 1's `train.collab_ema`, the baselines' `--ema`): at lr 3e-3 validation
NDCG@10 swings by about 0.01 from one epoch to the next, so the raw weights of the best
epoch are partly a lucky draw."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class ParamAverage:
    """An exponential moving average of parameters, updated after every optimizer step
    and swapped in for validation and selection."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.average = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for a, p in zip(self.average, self.params, strict=True):
            a.lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def swapped_in(self):
        """The parameters hold the average inside the block, their own values after it."""
        own = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.average, strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own, strict=True):
                    p.copy_(o)
