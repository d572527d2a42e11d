"""A 2-process gloo run under torchrun gives the weights of a 1-process run on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    worker = "tests/train/_ddp_worker.py"
    subprocess.run([sys.executable, worker, str(tmp_path / "one.pt")], check=True, cwd=REPO, env=env)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            worker,
            str(tmp_path / "two.pt"),
        ],
        check=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # The run really trained: weights moved away from the initialisation.
    from tests.train._tiny import tiny_model

    init = tiny_model().state_dict()
    assert not torch.allclose(one["3.weight"], init["3.weight"])


def test_global_batchnorm_equals_batchnorm_in_one_process():
    from adderconvert.train import GlobalBatchNorm2d

    bn, gbn = torch.nn.BatchNorm2d(3), GlobalBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(gbn(x), bn(x))
    torch.testing.assert_close(gbn.running_var, bn.running_var)
