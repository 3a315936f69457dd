"""What the test files share: tiny problems, the closure, the training loops of both
modes and comparisons of parameters and state. Fixtures are in ``conftest.py``; the
tables of configurations and of errors in ``configs.py``."""

import io

import torch
from torch import nn


# -- tiny problems ---------------------------------------------------------------------------


def mlp(*widths):
    """Linear layers of the given widths with a ReLU between each two."""
    layers = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def regression(*widths, rows, seed=0, dtype=torch.float32):
    """``mlp(*widths)`` and a batch of ``rows`` random inputs and targets, all drawn
    from ``torch.manual_seed(seed)`` (the model first)."""
    torch.manual_seed(seed)
    model = mlp(*widths).to(dtype)
    x = torch.randn(rows, widths[0], dtype=dtype)
    y = torch.randn(rows, widths[-1], dtype=dtype)
    return model, x, y


def quadratic(dim=5, seed=0, dtype=torch.float32):
    """Least squares: ``nn.Linear(dim, 1)`` on a batch of 32 random rows."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(dim, 1).to(dtype)
    x = torch.randn(32, dim, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    return model, x, y


class Net(nn.Module):
    """Linear, BatchNorm, ReLU, dropout (``p``), Linear: buffers and randomness in the forward."""

    def __init__(self, p=0.5):
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(p), nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def small_mlp(seed=0):
    """The integration tests' model: 4 inputs, 16 hidden units, 1 output."""
    torch.manual_seed(seed)
    return mlp(4, 16, 1)


def linear_data(n=64, seed=1):
    """``n`` rows of 4 features and a noisy linear target (the integration tests' data)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(n, 1, generator=g)


def linear_loader(batch_size=32, n=256, seed=1):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*linear_data(n, seed)), batch_size=batch_size)


def mse(model, x, y):
    return nn.functional.mse_loss(model(x), y)


# -- the closure and the loops of both modes -------------------------------------------------


def closure_of(opt, loss_fn, zero="optimizer", counter=None):
    """The closure of the docs around ``loss_fn()``; ``zero`` is who zeroes the gradients
    ("optimizer", a module to call ``zero_grad()`` on, or "none"), and ``counter`` (a
    list) gets one entry per call."""

    def closure():
        if counter is not None:
            counter.append(1)
        if zero == "optimizer":
            opt.zero_grad()
        elif zero != "none":
            zero.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


def train_on(opt, loss_fn, steps):
    """``steps`` closure-mode steps on the loss ``loss_fn()``."""
    closure = closure_of(opt, loss_fn)
    for _ in range(steps):
        opt.step(closure)


def closure_for(opt, model, x, y, **kwargs):
    """``closure_of`` the mean squared error of ``model`` on ``(x, y)``."""
    return closure_of(opt, lambda: mse(model, x, y), **kwargs)


def train(model, opt, x, y, steps, nan_at=None):
    """``steps`` closure-mode steps on ``(x, y)``; at step index ``nan_at`` the closure
    reports a NaN loss (its gradients stay finite)."""
    closure = closure_for(opt, model, x, y)
    for i in range(steps):
        opt.step((lambda: closure() * float("nan")) if i == nan_at else closure)


def train_closure_free(model, opt, x, y, calls):
    """``calls`` calls of the closure-free loop: zero, backward, ``step()``."""
    for _ in range(calls):
        opt.zero_grad()
        mse(model, x, y).backward()
        opt.step()


# -- comparisons -----------------------------------------------------------------------------


def flat(params):
    """One detached vector of a module's parameters (or of a list of tensors)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    return torch.cat([p.detach().reshape(-1) for p in params])


def copies(model):
    return [p.detach().clone() for p in model.parameters()]


def all_equal(a, b):
    """Every pair of tensors bit for bit equal."""
    return all(torch.equal(x, y) for x, y in zip(a, b))


def same_state(before, after):
    """Two ``state_dict()["state"]`` equal bit for bit (but for "sampled", a host flag)."""
    return all(torch.equal(before[i][k], after[i][k]) for i in before for k in before[i] if k != "sampled")


def saved(model, opt):
    """Model and optimizer state written by ``torch.save`` into a buffer, ready to load."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return buffer
