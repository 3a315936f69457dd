"""How far the closure-free mode is from exact Alice (issue 14, item 2).

In closure-free mode the three gradients of a sampling step come from three
batches, so mini-batch noise enters the curvature samples. Two questions:

1. ``--part noise``: is the added noise what the formulas say? At a trained point
   ``nu`` of the digits MLP, with Rademacher ``z`` and ``sigma``, it compares the
   samples ``h = (g+ - g-) / (2 sigma)`` and ``rho = 2 ((g+ + g-)/2 - g0)^2 / sigma``
   taken on one batch (exact) and on three independent batches (closure-free), and
   prints the measured increase of ``E[h^2]`` and ``E[rho]`` next to the predicted
   ``Var(g) / (2 sigma^2)`` and ``3 Var(g) / sigma`` (``Var(g)``: the variance of one
   batch's gradient, per element, averaged over elements), and of ``E|h|``.
2. ``--part train``: loss curves and final metrics of exact Alice and the closure-free
   mode on two offline tasks from scikit-learn (digits: an MLP, 10 classes; breast
   cancer: logistic regression), over seeds, at a constant lr and with a linear
   warm-up from lr 0 over the first 10% of the steps. Both modes see the same batches
   in the same order; exact Alice costs 1.5 passes per batch (at quick_steps=3), the
   closure-free mode 1. Train loss and test accuracy are measured at ``mu``.

Only the mode varies. CPU, one thread. Usage::

    python benchmarks/closure_free_distance.py [--part noise|train|hf|all] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from alice import Alice  # noqa: E402


# -- tasks --------------------------------------------------------------------------

def load_task(name: str):
    """(x_train, y_train, x_test, y_test, make_model, loss_fn), standardised, 80/20 split."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name == "digits":
        data = datasets.load_digits()
        x, y = data.data / 16.0, data.target
    elif name == "breast_cancer":
        data = datasets.load_breast_cancer()
        x, y = data.data, data.target
    else:
        raise SystemExit(f"unknown task {name!r}")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    if name == "breast_cancer":
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    to = lambda a, dt=torch.float32: torch.tensor(a, dtype=dt)  # noqa: E731
    if name == "digits":
        def make_model():
            return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        return to(x_train), to(y_train, torch.long), to(x_test), to(y_test, torch.long), make_model, nn.functional.cross_entropy

    def make_model():
        return nn.Linear(30, 1)

    def bce(out, target):
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), target)

    return to(x_train), to(y_train), to(x_test), to(y_test), make_model, bce


TASKS = {"digits": dict(lr=1e-2, epochs=30, batch=32), "breast_cancer": dict(lr=1e-2, epochs=40, batch=32)}


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        out = model(x)
        pred = out.argmax(1) if out.shape[-1] > 1 else (out.squeeze(-1) > 0).long()
        return (pred == y.long()).float().mean().item()


def full_loss(model, x, y, loss_fn) -> float:
    with torch.no_grad():
        return loss_fn(model(x), y).item()


# -- part 2: training curves ---------------------------------------------------------------

ALICE_KWARGS: dict = {}  # --alice key=value: the same Alice settings for both modes


def train(task: str, mode: str, seed: int, warmup: bool) -> dict:
    x, y, xt, yt, make_model, loss_fn = load_task(task)
    cfg = TASKS[task]
    torch.manual_seed(seed)
    model = make_model()
    opt = Alice(model.parameters(), **{"lr": cfg["lr"], **ALICE_KWARGS}, seed=seed, closure_free=(mode == "closure_free"))
    n = len(x)
    steps_per_epoch = math.ceil(n / cfg["batch"])
    total = cfg["epochs"] * steps_per_epoch
    ramp = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / ramp)) if warmup else None
    order = torch.Generator().manual_seed(1000 + seed)
    curve, passes = [], 0
    for _epoch in range(cfg["epochs"]):
        opt.train()
        perm = torch.randperm(n, generator=order)
        for k in range(0, n, cfg["batch"]):
            idx = perm[k:k + cfg["batch"]]
            xb, yb = x[idx], y[idx]
            if mode == "exact":
                def closure():
                    nonlocal passes
                    passes += 1
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    return loss
                opt.step(closure)
            else:
                passes += 1
                loss_fn(model(xb), yb).backward()
                opt.step()
                opt.zero_grad()
            if scheduler is not None:
                scheduler.step()
        opt.eval()
        curve.append(full_loss(model, x, y, loss_fn))
    return dict(curve=curve, train_loss=curve[-1], test_acc=accuracy(model, xt, yt), passes=passes,
                calls=opt.calls)


def mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def part_train(seeds: int, tasks=None, warmups=(False, True)) -> list[dict]:
    rows = []
    for task in tasks or TASKS:
        for warmup in warmups:
            runs = {mode: [train(task, mode, s, warmup) for s in range(seeds)] for mode in ("exact", "closure_free")}
            for mode, results in runs.items():
                loss_m, loss_s = mean_std([r["train_loss"] for r in results])
                acc_m, acc_s = mean_std([r["test_acc"] for r in results])
                curve = [statistics.fmean(c) for c in zip(*(r["curve"] for r in results))]
                rows.append(dict(task=task, warmup=warmup, mode=mode, train_loss=loss_m, train_loss_sd=loss_s,
                                 test_acc=acc_m, test_acc_sd=acc_s, passes=results[0]["passes"],
                                 steps=results[0]["calls"], curve=curve))
    print("\n| task | lr schedule | mode | final train loss | test accuracy | passes | Alice steps |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        sched = "warm-up from 0 (10%)" if r["warmup"] else "constant"
        print(f"| {r['task']} | {sched} | {r['mode']} | {r['train_loss']:.4f} ± {r['train_loss_sd']:.4f} | "
              f"{100 * r['test_acc']:.1f} ± {100 * r['test_acc_sd']:.1f} % | {r['passes']} | {r['steps']} |")
    print("\nMean train loss (at mu) after each of these epochs:")
    for r in rows:
        epochs = len(r["curve"])
        marks = sorted({1, 2, 5, 10, 20, epochs} & set(range(1, epochs + 1)))
        sched = "warm-up" if r["warmup"] else "constant"
        cells = ", ".join(f"{e}: {r['curve'][e - 1]:.4f}" for e in marks)
        print(f"- {r['task']}, {sched}, {r['mode']}: {cells}")
    return rows


# -- part 1: the noise estimate -----------------------------------------------------------

def flat_grad(model, loss_fn, xb, yb) -> torch.Tensor:
    model.zero_grad()
    loss_fn(model(xb), yb).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def set_flat(model, vec):
    with torch.no_grad():
        k = 0
        for p in model.parameters():
            p.copy_(vec[k:k + p.numel()].view_as(p))
            k += p.numel()


def part_noise(seeds: int, triples: int = 150) -> list[dict]:
    x, y, _xt, _yt, make_model, loss_fn = load_task("digits")
    batch = TASKS["digits"]["batch"]
    rows = []
    torch.manual_seed(0)
    model = make_model()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)  # a trained point nu: 5 epochs of exact Alice
    gen = torch.Generator().manual_seed(7)
    for _ in range(5 * math.ceil(len(x) / batch)):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        opt.step(lambda idx=idx: loss_fn(model(x[idx]), y[idx]).backward() or loss_fn(model(x[idx]), y[idx]).detach())
    nu = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    for sigma in (1e-1, 1e-2, 1e-3):
        acc = {k: 0.0 for k in ("h2_ex", "h2_cf", "habs_ex", "habs_cf", "rho_ex", "rho_cf")}
        g0_samples = []
        for t in range(triples):
            z = torch.randint(0, 2, nu.shape, generator=gen).float() * 2 - 1
            grads = []  # per batch: (g+, g-, g0)
            for _b in range(3):
                idx = torch.randint(0, len(x), (batch,), generator=gen)
                per_point = []
                for d in (sigma, -sigma, 0.0):
                    set_flat(model, nu + d * z)
                    per_point.append(flat_grad(model, loss_fn, x[idx], y[idx]))
                grads.append(per_point)
                g0_samples.append(per_point[2])
            gp, gm, g0 = grads[0]
            h_ex, rho_ex = (gp - gm) / (2 * sigma), 2 * ((gp + gm) / 2 - g0) ** 2 / sigma
            gp_cf, gm_cf, g0_cf = grads[0][0], grads[1][1], grads[2][2]
            h_cf, rho_cf = (gp_cf - gm_cf) / (2 * sigma), 2 * ((gp_cf + gm_cf) / 2 - g0_cf) ** 2 / sigma
            acc["h2_ex"] += (h_ex ** 2).mean().item()
            acc["h2_cf"] += (h_cf ** 2).mean().item()
            acc["habs_ex"] += h_ex.abs().mean().item()
            acc["habs_cf"] += h_cf.abs().mean().item()
            acc["rho_ex"] += rho_ex.mean().item()
            acc["rho_cf"] += rho_cf.mean().item()
        acc = {k: v / triples for k, v in acc.items()}
        var = torch.stack(g0_samples).var(0)  # Var(g) per element, one batch's gradient
        var_mean = var.mean().item()
        sd_over_sigma = (var.sqrt() / sigma).mean().item()
        rows.append(dict(sigma=sigma, var_g=var_mean, h2_ex=acc["h2_ex"], h2_cf=acc["h2_cf"],
                         h2_added=acc["h2_cf"] - acc["h2_ex"], h2_predicted=var_mean / (2 * sigma ** 2),
                         habs_ex=acc["habs_ex"], habs_cf=acc["habs_cf"],
                         habs_noise_only=sd_over_sigma / math.sqrt(math.pi),
                         rho_ex=acc["rho_ex"], rho_cf=acc["rho_cf"], rho_added=acc["rho_cf"] - acc["rho_ex"],
                         rho_predicted=3 * var_mean / sigma))
    print("\nNoise check (digits MLP at a trained nu, batch 32, "
          f"{triples} triples of batches per sigma; means over all {nu.numel()} elements):")
    print("| sigma | mean Var(g) | E[h^2] exact | E[h^2] closure-free | added | predicted Var/(2 sigma^2) | "
          "E|h| exact | E|h| closure-free | E|noise| = sd/(sigma sqrt(pi)) | E[rho] exact | E[rho] closure-free | "
          "added | predicted 3 Var/sigma |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['sigma']:g} | {r['var_g']:.3g} | {r['h2_ex']:.4g} | {r['h2_cf']:.4g} | {r['h2_added']:.4g} | "
              f"{r['h2_predicted']:.4g} | {r['habs_ex']:.4g} | {r['habs_cf']:.4g} | {r['habs_noise_only']:.4g} | "
              f"{r['rho_ex']:.4g} | {r['rho_cf']:.4g} | {r['rho_added']:.4g} | {r['rho_predicted']:.4g} |")
    return rows


# -- part 3: a new user's HF Trainer run ---------------------------------------------------

def part_hf(seeds: int, steps: int = 120) -> list[dict]:
    """A tiny GPT-2 (from a config) on sequences that count up modulo 32, with the
    Trainer's defaults plus gradient_accumulation_steps=2 and a linear warm-up from 0
    over 10% of the steps: AliceTrainer (exact) vs the plain Trainer with a
    closure-free Alice, at the same lr. Loss on held-out sequences, at mu."""
    import tempfile

    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from alice.integrations.hf import AliceTrainer, ClosureFreeCallback

    transformers.logging.set_verbosity_error()

    def sequences(n, seed):
        starts = torch.randint(0, 32, (n, 1), generator=torch.Generator().manual_seed(seed))
        ids = (starts + torch.arange(16)) % 32
        return [{"input_ids": r, "labels": r} for r in ids]

    held_out = torch.stack([r["input_ids"] for r in sequences(128, 999)])
    rows = []
    for mode in ("exact (AliceTrainer)", "closure-free (Trainer)"):
        losses = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2))
            with tempfile.TemporaryDirectory() as tmp:
                args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                                         max_steps=steps, warmup_steps=steps // 10, learning_rate=1e-2,
                                         report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                                         seed=seed, logging_steps=steps)
                data = sequences(512, seed)
                if mode.startswith("exact"):
                    trainer = AliceTrainer(model=model, args=args, train_dataset=data)
                else:
                    opt = Alice(model.parameters(), lr=1e-2, closure_free=True)
                    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None),
                                      callbacks=[ClosureFreeCallback()])
                trainer.train()
            model.eval()
            with torch.no_grad():
                losses.append(model(input_ids=held_out, labels=held_out).loss.item())
        m, sd = mean_std(losses)
        rows.append(dict(mode=mode, held_out_loss=m, sd=sd))
    print(f"\nTiny GPT-2, HF Trainer defaults + gradient_accumulation_steps=2, warm-up from 0 over 10%, "
          f"lr 0.01, {steps} optimizer steps (held-out loss at mu; ln 32 = {math.log(32):.3f} is chance):")
    print("| mode | held-out loss |\n| --- | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['held_out_loss']:.4f} ± {r['sd']:.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["noise", "train", "hf", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--alice", action="append", default=[], metavar="KEY=VALUE",
                        help="an Alice argument for both modes (Python literal), e.g. grad_glass=False")
    parser.add_argument("--task", action="append", choices=list(TASKS), help="train part: only these tasks")
    parser.add_argument("--no-warmup", action="store_true", help="train part: constant lr only")
    args = parser.parse_args()
    import ast

    for pair in args.alice:
        key, _, value = pair.partition("=")
        ALICE_KWARGS[key] = ast.literal_eval(value)
    torch.set_num_threads(1)
    start = time.time()
    print(f"# closure_free_distance: torch {torch.__version__}, CPU, 1 thread, seeds {args.seeds}, "
          f"Alice settings {ALICE_KWARGS or 'default'}")
    out = {"torch": torch.__version__, "seeds": args.seeds, "tasks": TASKS}
    if args.part in ("noise", "all"):
        out["noise"] = part_noise(args.seeds)
    if args.part in ("train", "all"):
        out["train"] = part_train(args.seeds, args.task, (False,) if args.no_warmup else (False, True))
    if args.part in ("hf", "all"):
        out["hf"] = part_hf(args.seeds)
    print(f"\n({time.time() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
