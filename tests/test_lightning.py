"""Alice inside PyTorch Lightning (a real client of the closure contract): automatic
optimization calls ``optimizer.step(closure=...)``, checkpoints go through
``state_dict``/``load_state_dict``."""

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning.pytorch", reason="lightning is in the test extra")

from alice import Alice  # noqa: E402


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
        self.calls, self.losses = 0, []

    def training_step(self, batch, _):
        self.calls += 1
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        opt = Alice(self.parameters(), lr=1e-2, seed=0, model=self)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(256, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def trainer(tmp_path, max_steps):
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True,
    )


def test_lightning_trains_and_resumes(tmp_path):
    module = Regression()
    run = trainer(tmp_path, 20)
    run.fit(module, loader())
    opt = run.optimizers[0]
    assert opt.steps == 20 and module.calls == 10 * 3 + 3 * 3 + 7  # warm-up; steps 12, 16, 20 sample
    assert module.net[1].num_batches_tracked.item() == 20  # BatchNorm updated once per step
    assert sum(module.losses[-4:]) < sum(module.losses[:4])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    ckpt = tmp_path / "alice.ckpt"
    run.save_checkpoint(ckpt)

    resumed = Regression()
    run2 = trainer(tmp_path, 24)
    run2.fit(resumed, loader(), ckpt_path=ckpt)
    opt2 = run2.optimizers[0]
    assert opt2.steps == 24 and opt2.seed == opt.seed
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
