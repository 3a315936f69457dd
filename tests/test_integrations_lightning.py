"""Alice in Lightning (CPU): exact in 32-true and bf16-mixed with logging at the
centre only; 16-mixed, accumulate_grad_batches and gradient_clip_val refused in
closure mode with the fix (by AliceCallback, and by Alice itself where it can
tell), and working in the closure-free mode; consistent clipping by the callback;
validation and checkpoints at mu; a model with BatchNorm (``model=``) and a step
schedule that resumes from Lightning's checkpoint."""

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning.pytorch", reason="lightning is in the test extra")

from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from alice import Alice, ClosureError, LoopError  # noqa: E402
from alice.integrations import find_alice  # noqa: E402
from alice.integrations.lightning import AliceCallback, at_center  # noqa: E402
from helpers import flat, linear_loader as loader, small_mlp  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Module(L.LightningModule):
    def __init__(self, closure_free=False, lr=2e-2, schedule=None, alice_cls=Alice):
        super().__init__()
        self.net = small_mlp()
        self.closure_free, self.lr, self.schedule, self.alice_cls = closure_free, lr, schedule, alice_cls
        self.evaluations, self.logged = [], []

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).float(), y.float())  # torch 2.11: mixed-dtype mse backward fails
        self.evaluations.append(self.optimizers().optimizer.evaluation)
        if at_center(self):
            self.logged.append(loss.item())
            self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = self.alice_cls(self.parameters(), lr=self.lr, seed=0, closure_free=self.closure_free)
        if self.schedule is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.schedule(opt), "interval": "step"}}


def fit(module, max_steps=16, batch_size=32, **kwargs):
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, **kwargs)
    trainer.fit(module, loader(batch_size))
    return trainer


def full_loss(module):
    x, y = next(iter(loader(256)))
    with torch.no_grad():
        return nn.functional.mse_loss(module.net(x), y).item()


def fp16_scaler():
    """Lightning turns 16-mixed into bf16-mixed on CPU; this plugin is what a GPU run gets."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "16-true"])
def test_exact_alice_logs_only_at_the_centre(precision):
    module = Module()
    trainer = fit(module, max_steps=16, precision=precision, callbacks=[AliceCallback()])
    # warm-up (10 sampling steps), then steps 12 and 16 sample: 12 * 3 + 4 evaluations
    assert len(module.evaluations) == 12 * 3 + 4
    assert module.evaluations[:4] == ["plus", "minus", "center", "plus"]
    assert len(module.logged) == 16  # one logged loss per step, the one at nu
    assert trainer.optimizers[0].steps == 16


def test_a_warmup_from_lr_zero():
    module = Module(schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 4)))
    trainer = fit(module, max_steps=24)
    assert trainer.optimizers[0].calls == 23  # the first step ran at lr 0 and did not count
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-2)


REFUSALS = [  # (Trainer kwargs, what AliceCallback says, what Alice raises and says without the callback)
    (dict(plugins=[fp16_scaler()]), "bf16-mixed.*closure_free=True", ClosureError, "closure_free=True"),
    (dict(accumulate_grad_batches=2), "accumulate_grad_batches=2.*closure_free=True",
     LoopError, "accumulate_grad_batches=2.*closure_free=True"),
    (dict(gradient_clip_val=1.0), "AliceCallback\\(gradient_clip_val", LoopError, "gradient_clip_val=1.0"),
]


@pytest.mark.parametrize("kwargs, callback_says, alice_error, alice_says", REFUSALS)
def test_closure_mode_refusals_name_the_fix(kwargs, callback_says, alice_error, alice_says):
    with pytest.raises(LoopError, match=callback_says):
        fit(Module(), callbacks=[AliceCallback()], **kwargs)
    with pytest.raises(alice_error, match=alice_says):  # Alice refuses them by itself at the first step
        fit(Module(), **kwargs)


def test_alice_finds_the_trainer_behind_lightnings_closure():
    with pytest.raises(LoopError, match="gradient_clip_val=1.0"):
        fit(Module(), gradient_clip_val=1.0)
    fit(Module(), max_steps=2, callbacks=[AliceCallback(gradient_clip_val=1.0)])


def test_consistent_clipping_by_the_callback():
    class Recording(Module):
        def on_before_optimizer_step(self, optimizer):  # runs after the callback's clipping
            norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in self.parameters()]))
            self.norms.append((find_alice(optimizer).evaluation, norm.item()))

    module = Recording()
    module.norms = []
    callback = AliceCallback(gradient_clip_val=1e-3)
    fit(module, max_steps=2, callbacks=[callback])
    plus, minus, center = module.norms[:3]
    assert (plus[0], minus[0], center[0]) == ("plus", "minus", "center")
    assert plus[1] == pytest.approx(1e-3, rel=1e-3)  # the first evaluation is clipped to max_norm ...
    assert minus[1] != pytest.approx(1e-3, rel=1e-6)  # ... and the others by the same factor
    assert callback.last_grad_norm > 1e-3
    with pytest.raises(LoopError, match="set it to None"):
        fit(Module(), callbacks=[AliceCallback(gradient_clip_val=1.0)], gradient_clip_val=1.0)


@pytest.mark.parametrize("kwargs", [dict(plugins=[fp16_scaler()]), dict(accumulate_grad_batches=2),
                                    dict(gradient_clip_val=1.0)], ids=["16-mixed", "accumulate", "clip"])
def test_closure_free_mode_runs_where_closure_mode_cannot(kwargs):
    module = Module(closure_free=True, lr=5e-2)
    before = full_loss(module)
    trainer = fit(module, max_steps=60, batch_size=16, callbacks=[AliceCallback()], **kwargs)
    opt = trainer.optimizers[0]
    opt.eval()  # mu in the parameters
    assert full_loss(module) < 0.8 * before
    assert len(module.evaluations) == 60 * kwargs.get("accumulate_grad_batches", 1)


def test_closure_free_accumulation_equals_the_full_batch():
    finals = []
    for batch_size, accumulate in ((32, 1), (16, 2)):
        module = Module(closure_free=True)
        trainer = fit(module, max_steps=20, batch_size=batch_size, accumulate_grad_batches=accumulate)
        trainer.optimizers[0].eval()
        finals.append(flat(module))
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-5, atol=1e-6)


class Validated(Module):
    """Records, in every validation step, whether Alice had mu in the parameters."""

    def __init__(self):
        super().__init__(closure_free=True, lr=5e-2)
        self.validated_at_mu = []

    def validation_step(self, batch, _):
        self.validated_at_mu.append(not self.optimizers().optimizer.training)
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)


def test_closure_free_callback_validates_checkpoints_and_ends_at_mu(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(callbacks, validate):
        module = Validated()
        trainer = L.Trainer(max_steps=16, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=callbacks, limit_val_batches=2,
                            val_check_interval=4 if validate else None, num_sanity_val_steps=1,
                            limit_train_batches=None if validate else 16, check_val_every_n_epoch=None)
        trainer.fit(module, loader(16), loader(64) if validate else None)
        return module, trainer.optimizers[0]

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module, opt = run([AliceCallback(), checkpoint], validate=True)
    assert module.validated_at_mu == [True] * 9  # a sanity batch, then 4 validations x 2 batches: at mu
    assert not opt.training  # the fit ended with mu in the parameters
    at_end = flat(module)
    opt.eval()
    torch.testing.assert_close(flat(module), at_end, rtol=0, atol=0)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(torch.cat([v.reshape(-1) for v in saved.values()]), at_end, rtol=0, atol=0)
    # validating (eval, then train again) changed no training step
    plain, plain_opt = run([AliceCallback()], validate=False)
    torch.testing.assert_close(flat(plain), at_end, rtol=0, atol=0)
    # without the callback the model is left at the evaluation point, sigma away from mu
    bare, bare_opt = run([], validate=False)
    assert bare_opt.training
    assert (flat(bare) - at_end).abs().max() > 1e-3


class Regression(L.LightningModule):
    """BatchNorm and dropout, Alice given the module (``model=``) and a step schedule."""

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


def test_trains_with_batchnorm_and_a_schedule_and_resumes_from_a_checkpoint(tmp_path):
    def trainer(max_steps):
        return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, deterministic=True)

    module = Regression()
    run = trainer(20)
    run.fit(module, loader(seed=0))
    opt = run.optimizers[0]
    assert opt.steps == 20 and module.calls == 10 * 3 + 3 * 3 + 7  # warm-up; steps 12, 16, 20 sample
    assert module.net[1].num_batches_tracked.item() == 20  # BatchNorm updated once per step
    assert sum(module.losses[-4:]) < sum(module.losses[:4])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    ckpt = tmp_path / "alice.ckpt"
    run.save_checkpoint(ckpt)

    resumed = Regression()
    run2 = trainer(24)
    run2.fit(resumed, loader(seed=0), ckpt_path=ckpt)
    opt2 = run2.optimizers[0]
    assert opt2.steps == 24 and opt2.seed == opt.seed
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
