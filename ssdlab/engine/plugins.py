"""Training plugins: how a lesson changes training without the training loop knowing the lesson.

The trainer calls every plugin at four points; each method does nothing unless a plugin overrides it:
- `setup(model, device)`: once, on the built model (on its device), before the optimizer is made;
  a plugin may change the model in place, e.g. wrap `model.criterion` in an extra loss term;
- `targets(images)`: per batch, extra training targets merged into the data's (a teacher's outputs);
- `after_backward(model, iteration)`: after loss.backward() and before optimizer.step()
  (sparse training's L1 on BN γ, freezing quantization observers);
- `eval_record(model)`: at each evaluation, extra values logged to metrics.jsonl (the γ of sparse training).

`ssdlab.lessons.plugins_from_config` builds the course's plugins from a config; `Trainer(cfg, plugins=[...])`
adds your own.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class Plugin:
    """A training plugin; subclass it and override the points you need."""

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Change the freshly built model in place before the optimizer is made."""

    def targets(self, images: Tensor) -> dict[str, Tensor]:
        """Extra training targets for a batch (merged into the data's)."""
        return {}

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        """Act on the gradients before the optimizer step."""

    def eval_record(self, model: nn.Module) -> dict:
        """Extra values logged with each evaluation ({} logs nothing)."""
        return {}


class AfterBackward(Plugin):
    """A plugin made of one function called after each backward pass: `AfterBackward(lambda model, it: ...)`."""

    def __init__(self, function: Callable[[nn.Module, int], None]):
        self.function = function

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        """Call the function."""
        self.function(model, iteration)
