"""The fp16 loss-scaling rows on a GPU, where the frameworks create the GradScaler
themselves (on CPU the other test files hand one over): Lightning ``16-mixed``,
Accelerate ``mixed_precision="fp16"``, HF ``fp16=True``, a bare GradScaler.
Closure mode is refused with the fix; the closure-free mode trains."""

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from alice import Alice, LoopError  # noqa: E402


def data(n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def test_gradscaler_closure_free_on_cuda():
    model = make_model().cuda()
    opt = Alice(model.parameters(), lr=5e-2, seed=0, closure_free=True)
    scaler = torch.amp.GradScaler("cuda")
    x, y = (t.cuda() for t in data())
    before = nn.functional.mse_loss(model(x), y).item()
    for xb, yb in zip(x.split(32) * 10, y.split(32) * 10):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(xb).float(), yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    opt.eval()
    assert nn.functional.mse_loss(model(x), y).item() < 0.5 * before


def test_lightning_16_mixed_on_cuda():
    L = pytest.importorskip("lightning.pytorch")
    from alice.integrations.lightning import AliceCallback

    class Module(L.LightningModule):
        def __init__(self, closure_free):
            super().__init__()
            self.net, self.closure_free = make_model(), closure_free

        def training_step(self, batch, _):
            return nn.functional.mse_loss(self.net(batch[0]).float(), batch[1])

        def configure_optimizers(self):
            return Alice(self.parameters(), lr=5e-2, seed=0, closure_free=self.closure_free)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=32)

    def fit(module):
        trainer = L.Trainer(max_steps=80, accelerator="gpu", devices=1, precision="16-mixed", logger=False,
                            enable_progress_bar=False, enable_checkpointing=False, callbacks=[AliceCallback()])
        trainer.fit(module, loader)
        return trainer

    with pytest.raises(LoopError, match="bf16-mixed"):
        fit(Module(closure_free=False))
    trainer = fit(Module(closure_free=True))
    assert trainer.precision_plugin.scaler is not None and trainer.optimizers[0].calls > 30


def test_accelerate_fp16_on_cuda():
    pytest.importorskip("accelerate")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from alice.integrations.accelerate import alice_step, micro_batch_closure

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision="fp16")
    assert accelerator.scaler is not None
    model = make_model()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=32)
    model, opt, loader = accelerator.prepare(model, Alice(model.parameters(), lr=5e-2, seed=0), loader)
    batch = next(iter(loader))
    loss_fn = lambda b: nn.functional.mse_loss(model(b[0]).float(), b[1])  # noqa: E731
    with pytest.raises(LoopError, match="bf16"):
        alice_step(accelerator, opt, micro_batch_closure(accelerator, loss_fn, [batch]))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision="fp16", gradient_accumulation_steps=2)
    model = make_model()
    model, opt, loader = accelerator.prepare(model, Alice(model.parameters(), lr=5e-2, seed=0, closure_free=True),
                                             torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()),
                                                                         batch_size=16))
    for _ in range(6):
        for b in loader:
            with accelerator.accumulate(model):
                accelerator.backward(nn.functional.mse_loss(model(b[0]).float(), b[1]))
                opt.step()
                opt.zero_grad()
    assert opt.optimizer.calls > 30 and torch.isfinite(next(model.parameters())).all()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_hf_trainer_fp16_on_cuda(tmp_path):
    transformers = pytest.importorskip("transformers")
    from alice.integrations.hf import AliceTrainer, ClosureFreeCallback

    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    ids = (torch.randint(0, 32, (64, 1), generator=torch.Generator().manual_seed(0)) + torch.arange(16)) % 32
    dataset = [{"input_ids": row, "labels": row} for row in ids]

    def args(**kw):
        return transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                                              gradient_accumulation_steps=2, max_steps=30, warmup_steps=3,
                                              learning_rate=2e-2, report_to="none", save_strategy="no",
                                              disable_tqdm=True, **kw)

    torch.manual_seed(0)
    with pytest.raises(LoopError, match="bf16=True"):
        AliceTrainer(model=transformers.GPT2LMHeadModel(config), args=args(fp16=True), train_dataset=dataset).train()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    opt = Alice(model.parameters(), lr=2e-2, seed=0, closure_free=True)
    transformers.Trainer(model=model, args=args(fp16=True), train_dataset=dataset, optimizers=(opt, None),
                         callbacks=[ClosureFreeCallback()]).train()
    # 30 Trainer steps, all in the warm-up (every Alice step samples: three step() calls each) -> 10
    # Alice steps; fewer would mean the loss scaler's skipped steps broke a sampling step apart
    assert opt.calls == 10 and opt.evaluation is None
    torch.manual_seed(0)
    trainer = AliceTrainer(model=transformers.GPT2LMHeadModel(config), args=args(bf16=True), train_dataset=dataset)
    trainer.train()
    assert trainer.optimizer.optimizer.calls == 29
