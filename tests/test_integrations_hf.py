"""Alice with the Hugging Face Trainer, on a tiny GPT-2 built from a config (no
downloads): the plain Trainer's ClosureError, AliceTrainer (exact, with accumulation,
a warm-up from lr 0 and max_grad_norm), the closure-free mode with the plain
Trainer, and fp16's refusal."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is an optional extra (alice-optimizer[hf])")
pytest.importorskip("accelerate", reason="the Trainer needs accelerate (alice-optimizer[hf])")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from alice import Alice, ClosureError, LoopError  # noqa: E402
from alice.integrations.hf import AliceTrainer, ClosureFreeCallback  # noqa: E402
from helpers import flat  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, LENGTH = 32, 16


class Counting(torch.utils.data.Dataset):
    """Sequences that count up modulo the vocabulary: the next token is learnable."""

    def __init__(self, n=64, seed=0):
        starts = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
        self.ids = (starts + torch.arange(LENGTH)) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(config)


def args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=2,
        max_steps=24, warmup_steps=4, learning_rate=2e-2, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=4, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    return TrainingArguments(**{**defaults, **kwargs})


def count_passes(model):
    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    return passes


def mean_loss(model, data=Counting(64, seed=1)):
    model.eval()
    with torch.no_grad():
        batch = torch.stack([data[i]["input_ids"] for i in range(len(data))])
        return model(input_ids=batch, labels=batch).loss.item()


def test_plain_trainer_with_closure_mode_alice_raises_naming_both_ways(tmp_path):
    model = tiny_gpt2()
    trainer = Trainer(model=model, args=args(tmp_path), train_dataset=Counting(),
                      optimizers=(Alice(model.parameters(), lr=1e-2), None))
    with pytest.raises(ClosureError, match="closure_free=True"):
        trainer.train()


def test_alice_trainer_defaults_accumulation_warmup_from_zero_and_clipping(tmp_path):
    """A new user's run: linear warm-up from lr 0, gradient_accumulation_steps=2,
    max_grad_norm=1.0 (the default), the Alice built from the arguments."""
    model = tiny_gpt2(dropout=0.1)
    before = mean_loss(model)
    passes = count_passes(model)
    trainer = AliceTrainer(model=model, args=args(tmp_path), train_dataset=Counting())
    result = trainer.train()
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, Alice) and not opt.closure_free
    # The first step ran at lr 0: one evaluation, no count. Of the 23 counted steps the
    # first 10 (warm-up) and steps 12, 16, 20 sample: three passes over the window of 2.
    assert opt.calls == 23
    assert len(passes) == 2 * (1 + 13 * 3 + 10)
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0)  # the linear decay reached 0
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["grad_norm"] > 0 for h in logged)
    assert mean_loss(model) < 0.9 * before
    assert result.training_loss > 0


def test_alice_trainer_accumulation_equals_the_full_batch(tmp_path):
    finals = []
    for batch, accumulate in ((8, 1), (4, 2)):
        model = tiny_gpt2()
        trainer = AliceTrainer(model=model, train_dataset=Counting(),
                               args=args(tmp_path, per_device_train_batch_size=batch,
                                         gradient_accumulation_steps=accumulate, max_steps=14))
        trainer.train()
        finals.append(flat(model))
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-4, atol=1e-5)


def test_closure_free_with_the_plain_trainer(tmp_path):
    model = tiny_gpt2(dropout=0.1)
    before = mean_loss(model)
    opt = Alice(model.parameters(), lr=2e-2, closure_free=True, seed=0)
    trainer = Trainer(model=model, args=args(tmp_path, max_steps=60), train_dataset=Counting(),
                      optimizers=(opt, None), callbacks=[ClosureFreeCallback()])
    trainer.train()
    assert opt.evaluation is None  # the callback left mu in the parameters for saving
    assert opt.calls > 25
    assert mean_loss(model) < 0.9 * before


def test_fp16_loss_scaling_is_refused_with_the_fix(tmp_path):
    model = tiny_gpt2()
    trainer = AliceTrainer(model=model, args=args(tmp_path), train_dataset=Counting())
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")  # what fp16=True gives on a GPU
    with pytest.raises(LoopError, match="bf16=True.*closure_free=True"):
        trainer.train()


def test_alice_trainer_resumes_from_a_checkpoint(tmp_path):
    def run(max_steps, resume=None):
        model = tiny_gpt2()
        trainer = AliceTrainer(model=model, train_dataset=Counting(),
                               args=args(tmp_path, max_steps=max_steps, save_strategy="steps", save_steps=7))
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer

    whole, trainer = run(14)
    resumed, trainer2 = run(14, resume=str(tmp_path / "checkpoint-7"))
    assert trainer2.optimizer.optimizer.calls == trainer.optimizer.optimizer.calls
    torch.testing.assert_close(flat(resumed), flat(whole), rtol=1e-5, atol=1e-6)


def test_closure_free_trainer_resumes_from_a_checkpoint(tmp_path):
    """The linear schedule changes the lr at every step, also inside a sampling step."""
    def run(resume=None):
        model = tiny_gpt2()
        opt = Alice(model.parameters(), lr=2e-2, closure_free=True, seed=0)
        trainer = Trainer(model=model, train_dataset=Counting(), optimizers=(opt, None),
                          callbacks=[ClosureFreeCallback()],
                          args=args(tmp_path, max_steps=40, save_strategy="steps", save_steps=20))
        trainer.train(resume_from_checkpoint=resume)
        return model, opt

    whole, opt = run()
    resumed, opt2 = run(resume=str(tmp_path / "checkpoint-20"))
    assert (opt2.calls, opt2.evaluation) == (opt.calls, opt.evaluation)
    torch.testing.assert_close(flat(resumed), flat(whole), rtol=1e-5, atol=1e-6)


def test_alice_trainer_in_bf16(tmp_path):
    model = tiny_gpt2()
    trainer = AliceTrainer(model=model, train_dataset=Counting(), args=args(tmp_path, bf16=True, max_steps=12))
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.optimizer.optimizer.calls == 11
    assert torch.isfinite(flat(model)).all()
