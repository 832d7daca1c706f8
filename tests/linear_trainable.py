"""The smallest thing the trainer accepts: a linear regression with a target net, and its batches
(shared by the checkpoint-safety and seam tests)."""

from __future__ import annotations

import torch
from torch import nn

from workbench.train import TrainConfig


class Algo:
    """A linear regression with a target net: the smallest thing the trainer accepts."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.target_model = nn.Linear(4, 1).requires_grad_(False)

    def loss(self, batch):
        pred = self.model(batch["x"]).squeeze(-1)
        return ((pred - batch["y"]) ** 2).mean(), {}

    def update_target(self):
        self.target_model.load_state_dict(self.model.state_dict())

    def param_groups(self):
        return [{"params": list(self.model.parameters())}]

    def to(self, device):
        return self

    def to_channels_last(self):
        return self


def batches(start: int):
    step = start
    while True:
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=g)
        yield {"x": x, "y": x.sum(-1), "game_id": torch.zeros(8, dtype=torch.long)}
        step += 1


def cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "lr": 1e-2, "target_update_period": 2, "log_every": 1,
                          "checkpoint_every": 2, "keep_checkpoints": 2, **kw})
