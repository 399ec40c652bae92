"""The ``attentive`` probe: an attention-pooling head on a frozen backbone's cached patch tokens.

The head is CAPI's ``AttnPoolClassifier`` (facebookresearch/capi ``eval_classification.py``): ``num_queries``
learned queries (one by default) attend over the patch tokens with ``num_heads = dim / 64`` heads through a
key/value projection ``Linear(dim, 2 dim)`` and scaled dot-product attention; the pooled vectors (concatenated
when there are several queries, as Efficient Probing's ``poolings/ep.py`` does) go through one linear layer.
``AttentivePoolHead`` is that module, written plainly with ``F.scaled_dot_product_attention``: it is what is
saved, what predictions and attention maps use, and what the tests check the training against.

Training, like CAPI, fits a grid of heads at once, learning rates x weight decays, AdamW with betas
(0.9, 0.95), learning rates scaled by batch / 256, a linear warm-up then a cosine decay; the head with the
best validation accuracy (ties to the lower validation loss) is tested once. The grid is trained in an
algebraically identical, cheaper form (``_GridHeads``), written here because no library offers it: with
learned queries, the keys enter only through ``q . W_k x`` = ``(W_k^T q) . x``, so each attention head's
scores are one dot product per token with a folded key vector, and the values enter only through
``W_v (sum_t a_t x_t) + b_v`` (the weights sum to 1), so the tokens are pooled before the value projection.
A batch then costs two (batch x tokens x dim) by (dim x heads) products instead of a (dim x 2 dim) projection
of every token for every head of the grid: at 256 tokens of 384 dims and 30 heads, 0.1 instead of 7 GFLOP
a batch of 64. The key bias drops out (it adds the same number to every token's score), so its gradient is
zero in either form and it stays at its initial zero.

Tokens come as ``TokenPart``: positions into a memory-mapped ``(N, tokens, dim)`` fp16 cache, read one batch
at a time, so the cache is never loaded whole.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, report
from core.features.tokens import TokenPart

# CAPI's grid spans 1e-5..1e-2 x {5e-4, 1e-3, 5e-2} over 12,500 steps on ImageNet; a few thousand images train
# for a few hundred steps, where the small rates barely move: half-decade steps from 1e-4 to 3e-2 and CAPI's
# smallest and largest weight decays (12 heads, trained together).
ATTENTIVE_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
ATTENTIVE_WEIGHT_DECAYS = (5e-4, 5e-2)
HEAD_WIDTH = 64  # CAPI: num_heads = dim / 64


@dataclass(frozen=True)
class AttentiveConfig:
    learning_rates: tuple[float, ...] = ATTENTIVE_LEARNING_RATES
    weight_decays: tuple[float, ...] = ATTENTIVE_WEIGHT_DECAYS
    num_queries: int = 1  # CAPI's default; Efficient Probing uses several
    num_heads: int | None = None  # None: dim // 64 (at least 1), as CAPI
    epochs: int = 20
    min_steps: int = 100  # few-shot sets are tiny: at least this many optimiser steps
    batch_size: int = 64
    warmup: float = 0.1  # share of the steps spent warming up (CAPI: 1,250 of 12,500)
    memory_budget_bytes: int = 1 << 30  # activations of one pass; the grid is split into passes above it

    def to_dict(self) -> dict:
        return asdict(self)


def heads_for(dim: int, config: AttentiveConfig) -> int:
    """The attention heads of a head on ``dim``-wide tokens: ``config.num_heads``, else dim // 64, dividing dim."""
    heads = config.num_heads or max(1, dim // HEAD_WIDTH)
    if dim % heads:
        raise FlowerProbeError(f"num_heads must divide the token width {dim}, got {heads}.")
    return heads


class AttentivePoolHead(nn.Module):
    """CAPI-style attention pooling then a linear layer: tokens (N, T, dim) -> logits (N, classes)."""

    def __init__(self, dim: int, num_classes: int, *, num_queries: int = 1, num_heads: int | None = None) -> None:
        super().__init__()
        self.dim, self.num_queries = dim, num_queries
        self.num_heads = num_heads or max(1, dim // HEAD_WIDTH)
        self.query = nn.Parameter(torch.zeros(num_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(num_queries * dim, num_classes)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, dim) -> (N, heads, L, dim / heads)."""
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, queries, heads, T); they sum to 1 over the T tokens."""
        keys = self._split(self.kv(tokens)[..., : self.dim])  # (N, H, T, dh)
        query = self._split(self.query[None].expand(tokens.shape[0], -1, -1))  # (N, H, Q, dh)
        scores = query @ keys.transpose(-1, -2) / math.sqrt(self.dim // self.num_heads)  # (N, H, Q, T)
        return scores.softmax(dim=-1).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens.shape[0], not len(tokens): both ONNX exporters keep the former as the graph's batch dimension and
        # bake the latter in as the traced batch size (core.bundle exports this head).
        batch = tokens.shape[0]
        keys, values = self.kv(tokens).chunk(2, dim=-1)
        query = self._split(self.query[None].expand(batch, -1, -1).to(tokens.dtype))
        pooled = F.scaled_dot_product_attention(query, self._split(keys), self._split(values))  # (N, H, Q, dh)
        return self.linear(pooled.transpose(1, 2).reshape(batch, self.num_queries * self.dim))


def load_attentive_head(state: dict[str, torch.Tensor]) -> AttentivePoolHead:
    """The head a saved ``state`` (``AttentivePoolHead.state_dict()`` plus a ``num_heads`` entry) describes."""
    num_queries, dim = state["query"].shape
    head = AttentivePoolHead(
        dim, state["linear.weight"].shape[0], num_queries=num_queries, num_heads=int(state["num_heads"].item())
    )
    head.load_state_dict({k: v for k, v in state.items() if k != "num_heads"})
    return head.eval()


# ----------------------------------------------------------------------------------------------- tokens


# ----------------------------------------------------------------------------------------------- the grid


class _GridHeads(nn.Module):
    """G heads of the same shape, trained at once in the folded form (see the module docstring)."""

    def __init__(self, g: int, dim: int, num_classes: int, *, num_queries: int, num_heads: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(dim)  # nn.Linear's initialisation, for kv and the classifier alike

        def uniform(*shape: int, limit: float) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * limit)

        self.g, self.dim, self.q, self.h = g, dim, num_queries, num_heads
        self.query = nn.Parameter(torch.randn(g, num_queries, dim, generator=generator).clamp(-2, 2) * 0.02)
        self.w_k, self.w_v = uniform(g, dim, dim, limit=bound), uniform(g, dim, dim, limit=bound)
        self.b_v = uniform(g, dim, limit=bound)
        self.w_out = uniform(g, num_classes, num_queries * dim, limit=1 / math.sqrt(num_queries * dim))
        self.b_out = uniform(g, num_classes, limit=1 / math.sqrt(num_queries * dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, dim) -> logits (B, G, classes)."""
        b, t, d = tokens.shape
        g, q, h, dh = self.g, self.q, self.h, self.dim // self.h
        folded = torch.einsum("gqhe,ghed->gqhd", self.query.view(g, q, h, dh), self.w_k.view(g, h, dh, d))
        scores = (tokens.reshape(b * t, d) @ (folded.reshape(g * q * h, d).T / math.sqrt(dh))).view(b, t, -1)
        weights = scores.transpose(1, 2).softmax(dim=-1)  # (B, G*Q*H, T)
        pooled = torch.bmm(weights, tokens).view(b, g, q, h, d)
        values = torch.einsum("bgqhd,ghed->bgqhe", pooled, self.w_v.view(g, h, dh, d)).reshape(b, g, q, d)
        values = values + self.b_v[None, :, None, :]
        return torch.einsum("bgk,gck->bgc", values.reshape(b, g, q * d), self.w_out) + self.b_out

    def head_state(self, index: int) -> dict[str, torch.Tensor]:
        """Head ``index`` as an ``AttentivePoolHead`` state dict (key bias zero: see the module docstring)."""
        return {
            "query": self.query[index].detach().clone(),
            "kv.weight": torch.cat([self.w_k[index], self.w_v[index]]).detach().clone(),
            "kv.bias": torch.cat([torch.zeros(self.dim), self.b_v[index]]).detach().clone(),
            "linear.weight": self.w_out[index].detach().clone(),
            "linear.bias": self.b_out[index].detach().clone(),
            "num_heads": torch.tensor(self.h),
        }


def _adamw_step(params, grads, state, *, lr: torch.Tensor, wd: torch.Tensor, step: int, betas=(0.9, 0.95)) -> None:
    """AdamW with one learning rate and weight decay per head (dimension 0 of every parameter).

    torch's optimisers take one learning rate per tensor; the heads of the grid share their tensors.
    """
    beta1, beta2 = betas
    for p, grad in zip(params, grads, strict=True):
        m, v = state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        shape = (-1,) + (1,) * (p.ndim - 1)
        with torch.no_grad():
            p.mul_(1 - (lr * wd).view(shape))
            denom = (v / (1 - beta2**step)).sqrt_().add_(1e-8)
            p.sub_(lr.view(shape) * (m / (1 - beta1**step)) / denom)


def _evaluate(model: _GridHeads, part: TokenPart, labels: np.ndarray, *, batch: int) -> torch.Tensor:
    """Logits (n, G, classes) of every head on ``part``."""
    out = []
    with torch.no_grad():
        for start in range(0, len(part), batch):
            out.append(model(part.batch(np.arange(start, min(len(part), start + batch)))))
    return torch.cat(out)


def train_attentive_grid(
    train: TokenPart,
    labels: np.ndarray,
    *,
    num_classes: int,
    config: AttentiveConfig = AttentiveConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> list[tuple[_GridHeads, list[tuple[float, float]]]]:
    """Train every (learning rate, weight decay) head of ``config``; returns (heads, their (lr, wd)) per pass."""
    _, tokens, dim = train.shape
    heads = heads_for(dim, config)
    grid = [(lr, wd) for lr in config.learning_rates for wd in config.weight_decays]
    batch = min(config.batch_size, len(train))
    # Activation bytes per head of a pass: scores, weights and their gradients (B x T x Q x H) and the pooled
    # tokens and their gradients (B x Q x H x dim), float32.
    per_head = 4 * batch * config.num_queries * heads * (4 * tokens + 2 * dim)
    per_pass = max(1, min(len(grid), config.memory_budget_bytes // max(1, per_head)))
    steps_per_epoch = math.ceil(len(train) / batch)
    total = max(config.epochs * steps_per_epoch, config.min_steps)
    warmup = max(1, int(config.warmup * total))
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    passes = []
    done = 0
    for start in range(0, len(grid), per_pass):
        chunk = grid[start : start + per_pass]
        model = _GridHeads(len(chunk), dim, num_classes, num_queries=config.num_queries, num_heads=heads, seed=seed)
        params = list(model.parameters())
        base_lr = torch.tensor([lr for lr, _ in chunk]) * batch / 256  # CAPI scales by batch / 256
        wd = torch.tensor([w for _, w in chunk])
        state: dict = {}
        order = np.zeros(0, np.int64)
        for step in range(1, total + 1):
            if len(order) < batch:
                order = np.concatenate([order, rng.permutation(len(train))])
            picked, order = order[:batch], order[batch:]
            x = train.batch(picked)
            logits = model(x)  # (B, G, classes)
            # Summed over heads, so each head's gradient is that of its own mean cross-entropy.
            loss = F.cross_entropy(logits.permute(0, 2, 1), y[picked][:, None].expand(-1, len(chunk)), reduction="none")
            grads = torch.autograd.grad(loss.mean(0).sum(), params)
            factor = (
                step / warmup if step <= warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            )
            _adamw_step(params, grads, state, lr=base_lr * factor, wd=wd, step=step)
            done += 1
            if progress is not None and step % 10 == 0:
                report(progress, "attentive", done, total * math.ceil(len(grid) / per_pass), message="attentive grid")
        passes.append((model, chunk))
    return passes


def attentive_probe(
    train: tuple[TokenPart, np.ndarray],
    valid: tuple[TokenPart, np.ndarray],
    test: tuple[TokenPart, np.ndarray],
    *,
    num_classes: int,
    config: AttentiveConfig = AttentiveConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
):
    """Train the grid on ``train``, choose the head on ``valid``, score ``test`` once; a ``ProbeResult``."""
    from core.probing.probes import ProbeResult, _accuracy, _log_loss, _one_thread, _softmax

    for name, (part, labels) in (("train", train), ("valid", valid), ("test", test)):
        if not isinstance(part, TokenPart) or len(part) == 0 or len(part) != len(labels):
            raise FlowerProbeError(
                f"the {name} part of the attentive probe needs cached tokens of n >= 1 images and one label each, "
                f"got {type(part).__name__} with {len(labels)} labels."
            )
        if np.min(labels) < 0 or np.max(labels) >= num_classes:
            raise FlowerProbeError(f"{name} labels must lie in 0..{num_classes - 1}.")
    if not config.learning_rates or not config.weight_decays or min(config.learning_rates) <= 0:
        raise FlowerProbeError(
            f"learning_rates must be positive numbers and weight_decays non-empty, got {config.learning_rates!r} "
            f"and {config.weight_decays!r}."
        )
    if not isinstance(config.num_queries, int) or config.num_queries < 1:
        raise FlowerProbeError(f"num_queries must be a whole number >= 1, got {config.num_queries!r}.")
    started = time.perf_counter()
    y_valid, y_test = np.asarray(valid[1]), np.asarray(test[1])
    # One thread, as the other probes (core.probing.probes._one_thread): on this busy 2-core machine two torch
    # threads spin-waiting on each other made a grid step 30x slower (0.61 s against 0.02 s, load average 20).
    with _one_thread():
        passes = train_attentive_grid(
            train[0], np.asarray(train[1]), num_classes=num_classes, config=config, seed=seed, progress=progress
        )
        best_key, best = None, None
        for model, chunk in passes:
            logits = _evaluate(model, valid[0], y_valid, batch=config.batch_size).numpy()
            for index, (lr, wd) in enumerate(chunk):
                head_logits = logits[:, index]
                finite = np.isfinite(head_logits).all()
                key = (
                    (_accuracy(head_logits, y_valid), -_log_loss(_softmax(head_logits), y_valid))
                    if finite
                    else (-1.0, -np.inf)
                )
                if best_key is None or key > best_key:
                    best_key, best = key, (model, index, lr, wd)
        if best_key[0] < 0:
            raise FlowerProbeError("every head of the attentive grid diverged on these tokens; lower learning_rates.")
        model, index, lr, wd = best
        state = model.head_state(index)
        head = load_attentive_head(state)
        with torch.no_grad():
            test_logits = torch.cat(
                [
                    head(test[0].batch(np.arange(s, min(len(test[0]), s + config.batch_size))))
                    for s in range(0, len(test[0]), config.batch_size)
                ]
            ).numpy()
    scores = _softmax(test_logits.astype(np.float64))
    return ProbeResult.from_scores(
        scores,
        y_test,
        protocol="attentive",
        num_classes=num_classes,
        seed=seed,
        started=started,
        hyperparameter={"name": "lr, weight decay", "value": [lr, wd]},
        valid_accuracy=best_key[0],
        standardised=False,
        test_loss=_log_loss(scores, y_test),
        head_state=state,
    )


def attention_maps(state: dict[str, torch.Tensor], tokens: np.ndarray) -> np.ndarray:
    """The saved head's attention over each image's tokens, averaged over queries and heads: (N, T), rows sum to 1."""
    head = load_attentive_head(state)
    with torch.no_grad():
        weights = head.attention(torch.as_tensor(np.asarray(tokens, dtype=np.float32)))
    return weights.mean(dim=(1, 2)).numpy()
