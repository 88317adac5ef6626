"""Train a small regression MLP with the shared loop; run alone or under torchrun (used by test_trainer.py)."""

import sys

import torch
from torch import nn

from scidiff.core.trainer import TrainConfig, train


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    data = torch.cat([x, torch.sin(x.sum(1, keepdim=True))], dim=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))

    def loss_fn(net, batch, generator):
        return ((net(batch[:, :4]) - batch[:, 4:]) ** 2).mean()

    cfg = TrainConfig(out_dir=out_dir, max_steps=20, batch_size=32, lr=1e-2, warmup_steps=5, checkpoint_every=20,
                      progress=False, tensorboard=False, log_every=5)
    train(model, data, loss_fn, cfg)


if __name__ == "__main__":
    main(sys.argv[1])
