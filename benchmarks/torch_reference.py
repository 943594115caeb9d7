"""A plain PyTorch implementation of the official iMixer / MLP-Mixer (timm layout), for timing
only: ``python -m benchmarks.step --compare_torch`` and ``python -m benchmarks.gpu_suite``
(optional extra ``torch``).

Same architecture and shapes as ``imixer_jax.models.Mixer``: patch Conv, N blocks of
``x + token_mixer(LN x)^T`` and ``x + fc_c2(GELU(fc_c1(LN x)))`` with per-sample drop path,
LayerNorm, mean over tokens, head. The iMLP runs ``n_iter`` steps ``z <- z0 + F(z)``,
``F = fc_sn2 . GELU . fc_sn1 . GELU`` from ``z0 = fc1(LN X^T)``, and fc_sn1 / fc_sn2 are softly
spectrally normalised with ``n_power`` power-iteration steps per call (the official per-call
hook). Training step: forward, cross-entropy on soft (mixed) targets, backward, AdamW; eager
PyTorch or the model under ``torch.compile``, float32 or bfloat16 autocast.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn


class SoftSpectralLinear(nn.Linear):
    """``y = x W_sn^T + b``, ``W_sn = W / max(1, sigma / coeff)``; u, v advance per call."""

    def __init__(self, n_in: int, n_out: int, coeff: float, n_power: int):
        super().__init__(n_in, n_out)
        self.coeff, self.n_power = coeff, n_power
        self.register_buffer("u", nn.functional.normalize(torch.randn(n_out), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn(n_in), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                u, v = self.u, self.v
                for _ in range(self.n_power):
                    v = nn.functional.normalize(self.weight.t() @ u, dim=0)
                    u = nn.functional.normalize(self.weight @ v, dim=0)
                self.u.copy_(u)
                self.v.copy_(v)
        with torch.autocast(x.device.type, enabled=False):  # fp32, as the official hook
            sigma = torch.dot(self.u.clone(), self.weight @ self.v.clone())  # u, v: per call
            weight = self.weight / torch.clamp(sigma / self.coeff, min=1.0)
        return nn.functional.linear(x, weight, self.bias)


class TokenMixer(nn.Module):
    """Token MLP (n_iter = 0, no fc_sn) or iMLP on ``[B, S, D]``."""

    def __init__(self, k: dict, tokens: int):
        super().__init__()
        dim, token_dim = k["hidden_dim"], k["tokens_mlp_dim"]
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(tokens, token_dim), nn.Linear(token_dim, tokens)
        self.act = nn.GELU()
        self.n_iter = k["n_iter"] if k["token_mixer"] == "imlp" else 0
        if self.n_iter:
            hidden = int(token_dim * k["hidden_ratio"])
            sn = dict(coeff=k["sn_coeff"], n_power=k["n_power"])
            self.fc_sn1 = SoftSpectralLinear(token_dim, hidden, **sn)
            self.fc_sn2 = SoftSpectralLinear(hidden, token_dim, **sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z0 = self.fc1(self.norm(x).transpose(1, 2))  # [B, D, T]
        z = z0
        for _ in range(self.n_iter):
            z = z0 + self.fc_sn2(self.act(self.fc_sn1(self.act(z))))
        return self.fc2(self.act(z)).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, k: dict, tokens: int):
        super().__init__()
        dim = k["hidden_dim"]
        self.token_mixer = TokenMixer(k, tokens)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc_c1 = nn.Linear(dim, k["channels_mlp_dim"])
        self.fc_c2 = nn.Linear(k["channels_mlp_dim"], dim)
        self.act, self.rate = nn.GELU(), k["drop_path_rate"]

    def drop_path(self, y: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return y
        keep = torch.rand(y.shape[0], 1, 1, device=y.device) >= self.rate
        return y * keep / (1 - self.rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.token_mixer(x))
        return x + self.drop_path(self.fc_c2(self.act(self.fc_c1(self.norm(x)))))


class Mixer(nn.Module):
    """``images [B, 3, H, W] -> logits [B, K]`` for registry kwargs ``k``."""

    def __init__(self, k: dict):
        super().__init__()
        p, dim = k["patch_size"], k["hidden_dim"]
        tokens = (k["img_size"] // p) ** 2
        self.stem = nn.Conv2d(3, dim, p, stride=p)
        self.blocks = nn.Sequential(*(Block(k, tokens) for _ in range(k["num_blocks"])))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, k["num_classes"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images).flatten(2).transpose(1, 2)  # [B, S, D]
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


@dataclasses.dataclass(frozen=True)
class Timing:
    """One model's training steps: ``step_s`` the mean of the timed steps, ``first_step_s`` the
    first step (with ``torch.compile``: its compilation), ``peak_memory_bytes``
    ``torch.cuda.max_memory_allocated`` of this model's steps (None on the CPU)."""

    step_s: float
    first_step_s: float
    peak_memory_bytes: int | None


def time_train_step(
    k: dict,
    *,
    batch: int,
    dtype: str = "float32",
    steps: int = 10,
    warmup: int = 2,
    compile: bool = False,
) -> Timing:
    """Time training steps of ``Mixer(k)`` on a random batch: ``warmup`` untimed ones (the first
    timed alone), then ``steps``; ``compile``: the model under ``torch.compile``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = Mixer(k).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    forward = torch.compile(model) if compile else model
    images = torch.rand(batch, 3, k["img_size"], k["img_size"], device=device) * 2 - 1
    targets = torch.softmax(torch.randn(batch, k["num_classes"], device=device), dim=-1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = forward(images)
        loss = torch.sum(-targets * torch.log_softmax(logits.float(), -1), -1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()
    _synchronize(device)
    first_step_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return Timing(step_s=step_s, first_step_s=first_step_s, peak_memory_bytes=peak)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
