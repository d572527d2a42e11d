"""Run by test_distributed.py, once plainly and once under torchrun: train the tiny model, save weights."""

import sys

import torch

from adderconvert.train import TrainConfig, finish_distributed, fit, init_distributed
from tests.train._tiny import tiny_data, tiny_model

if __name__ == "__main__":
    out = sys.argv[1]
    ctx = init_distributed("cpu")
    model = tiny_model()
    # Every weight at lr 0.05 (adder_lr_scale 1): the tolerance below holds for steps of that size.
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, adder_lr_scale=1.0, kd=False, sync_bn=True, progress=False)
    fit(model, tiny_data(), tiny_data(16, seed=2), config, ctx=ctx)
    if ctx.is_main:
        torch.save(model.state_dict(), out)
    finish_distributed()
