"""The networks of the harness's tasks, written small enough to read in one sitting.

Each constructor takes ``act`` (the activation of its hidden layers) because the
paper's question is architectural: ReLU's kinks make the "gradient glass" that
Alice models and a Hessian cannot see, while GELU is smooth.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def mlp(sizes: list[int], act: str) -> nn.Module:
    """Fully connected layers of ``sizes`` with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


def small_cnn(act: str) -> nn.Module:
    """Two 5x5 conv + max-pool stages and a linear head for 1x28x28 images (~20k weights)."""
    a = ACTIVATIONS[act]
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), a(), nn.MaxPool2d(2),   # 16x12x12
        nn.Conv2d(16, 32, 5), a(), nn.MaxPool2d(2),  # 32x4x4
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP with ``act``."""

    def __init__(self, width: int, heads: int, act: str):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), ACTIVATIONS[act](), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # Written out rather than scaled_dot_product_attention: its fused kernels have no
        # double backward, which AdaHessian and Sophia need for Hessian-vector products.
        scores = (q @ k.transpose(-2, -1)) / (c // self.heads) ** 0.5
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        attended = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """A byte-level causal transformer: logits [B, T, 256] for input bytes [B, T]."""

    def __init__(self, act: str, context: int, width: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed, self.position = nn.Embedding(256, width), nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.Sequential(*(_Block(width, heads, act) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, 256)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


class _Residual(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers and a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, fan_in: int, fan_out: int, stride: int, act: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(fan_in, fan_out, 3, stride, 1, bias=False), nn.BatchNorm2d(fan_out), ACTIVATIONS[act](),
            nn.Conv2d(fan_out, fan_out, 3, 1, 1, bias=False), nn.BatchNorm2d(fan_out),
        )
        self.shortcut = nn.Identity() if stride == 1 and fan_in == fan_out else nn.Sequential(
            nn.Conv2d(fan_in, fan_out, 1, stride, bias=False), nn.BatchNorm2d(fan_out)
        )
        self.act = ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def resnet18(act: str, classes: int = 10) -> nn.Module:
    """ResNet-18 in the CIFAR geometry: a 3x3 stem without max-pool, stages of 64-512 channels."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), ACTIVATIONS[act]()]
    fan_in = 64
    for fan_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Residual(fan_in, fan_out, stride, act), _Residual(fan_out, fan_out, 1, act)]
        fan_in = fan_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)
