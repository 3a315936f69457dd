"""The curvature instrument inside Lightning and the HF Trainer (CPU, tiny models, torch's
AdamW): readings on the schedule of optimizer steps, sigma from the optimizer's lr, logged
through the Trainer's logger (Lightning) or a JSON-lines file (HF)."""

import csv
import json

import pytest
import torch
from torch import nn
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny models


def test_lightning_callback_reads_every_n_optimizer_steps_into_the_trainers_logger(tmp_path):
    L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (alice-optimizer[lightning])")
    from lightning.pytorch.loggers import CSVLogger

    from alice.integrations.lightning import CurvatureCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(128, 4, generator=g), torch.randint(0, 3, (128,), generator=g))
    callback = CurvatureCallback(lambda m, b: nn.functional.cross_entropy(m.net(b[0]), b[1]), every=4)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", logger=CSVLogger(tmp_path, name="run"),
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        accumulate_grad_batches=2, callbacks=[callback])
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))
    records = callback.monitor.records
    assert [r["step"] for r in records] == [4, 8]  # optimizer steps (two batches each), not batches
    assert [r["sigma"] for r in records] == [1e-2, 1e-2]  # AdamW's lr
    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    logged = [(int(r["step"]), float(r["curvature/glass_fraction"])) for r in rows if r.get("curvature/glass_fraction")]
    assert logged == [(r["step"], pytest.approx(r["glass_fraction"], rel=1e-6)) for r in records]
    with pytest.raises(ValueError, match="Invalid loss_fn"):
        CurvatureCallback(None)


def test_hf_callback_reads_on_held_batches_into_jsonl(tmp_path):
    pytest.importorskip("transformers", reason="transformers is an optional extra (alice-optimizer[hf])")
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate (alice-optimizer[hf])")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from alice.diagnostics import curvature
    from alice.integrations.hf import CurvatureCallback

    vocab, length = 32, 16
    starts = torch.randint(0, vocab, (64, 1), generator=torch.Generator().manual_seed(0))
    ids = (starts + torch.arange(length)) % vocab

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=length, n_embd=32, n_layer=1, n_head=2))
    held = {"input_ids": ids[:8], "labels": ids[:8]}
    path = tmp_path / "curvature.jsonl"
    callback = CurvatureCallback([held], every=3, cost="business", sigma=0.01, log=str(path), seed=5)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-3,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=Counting(), callbacks=[callback]).train()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert set(lines[0]["layers"]) >= {"transformer.wte", "transformer.h.0.attn.c_attn"}
    # the last reading is the instrument at the trained weights on the held batch (the second
    # reading of a generator seeded 5: replay the first to get there)
    generator = torch.Generator().manual_seed(5)
    loss_fn = lambda m, b: m(**b).loss  # noqa: E731
    for _ in range(2):
        direct = curvature(model, loss_fn, held, sigma=0.01, draws=4, generator=generator, fit=False)
    assert lines[-1]["glass_fraction"] == pytest.approx(direct.to_dict()["glass_fraction"], rel=1e-9)
