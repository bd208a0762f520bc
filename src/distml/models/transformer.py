"""A decoder-only transformer language model (GPT-style, pre-LayerNorm, tied embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distml.errors import ConfigError
from distml.models.base import (LANGUAGE_MODELING as LM_TASK, MODELS, check_dropout, check_input_shape,
                                check_positive_int)


class Embedding(nn.Module):
    """Token embedding + learned positional embedding (Radford et al. 2018), then dropout."""

    def __init__(self, vocab: int, d_model: int, context: int, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"transformer_lm: sequence of {t} tokens is longer than the model's "
                             f"context {self.positions.num_embeddings}")
        pos = torch.arange(t, device=idx.device)
        return self.drop(self.tokens(idx) + self.positions(pos))


class SelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention(is_causal=True)``.

    q, k and v are separate Linear layers so that tensor parallelism can split each by
    output columns (whole heads per rank); the head count is read from the projected
    width (``-1``), so a column-split layer computes its local heads unchanged.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """Linear(d_model → d_ff) → GELU → Linear(d_ff → d_model)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (Xiong et al. 2020): x + attn(LN(x)), then + mlp(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TiedHead(nn.Module):
    """Final LayerNorm, then logits through the token embedding's own weight (Press & Wolf 2017).

    ``weight`` is the embedding's Parameter itself (one Parameter registered in two
    modules): ``parameters()`` yields it once, and ``state_dict`` holds it under both names.
    """

    def __init__(self, d_model: int, tokens: nn.Embedding):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.weight = tokens.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(x), self.weight)


@MODELS.register("transformer_lm", kind="neural network",
                 paper="Vaswani et al. 2017; Radford et al. 2019 (GPT-2); Press & Wolf 2017",
                 summary="decoder-only transformer LM: pre-LayerNorm, causal SDPA attention, "
                         "learned positions, tied input/output embeddings")
class TransformerLM(nn.Module):
    """Decoder-only transformer language model (GPT-2 layout, Radford et al. 2019).

    Embedding (tokens + learned positions) → ``n_layers`` pre-LayerNorm blocks (causal
    multi-head attention, GELU MLP) → final LayerNorm → logits with the token
    embedding's weight (tied). Input: token ids ``(B, T)`` with ``T <= context``; output:
    logits ``(B, T, vocab)``; the default loss is cross-entropy over every position.
    The layers form one ``nn.Sequential`` (``layers``: embedding, blocks, head), so
    ``pipeline`` cuts it between blocks; :meth:`tp_plan` tells ``tensor_parallel`` how
    to split the heads and the MLP. Weights start as in GPT-2: N(0, 0.02), the residual
    projections scaled by 1/sqrt(2·n_layers).

    Args:
        input_shape: ``(T,)``, the data's window length.
        num_classes: the vocabulary size (from the data).
        task: must be "language_modeling" (None skips the check).
        d_model: the residual width; divisible by n_heads.
        n_layers: the number of blocks (>= 1).
        n_heads: attention heads per block (>= 1).
        d_ff: the MLP's hidden width (default 4·d_model).
        context: the longest sequence (rows of the positional table); default T, and at
            least T.
        dropout: on embeddings, attention weights and residual branches, in [0, 1).

    Raises:
        ConfigError: a task other than language modelling, a vocabulary < 2, d_model not
            divisible by n_heads, a context shorter than the data's windows, bad sizes.
    """

    default_loss = "cross_entropy"

    def __init__(self, input_shape: Sequence[int], num_classes: int, task: str | None = None,
                 d_model: int = 128, n_layers: int = 4, n_heads: int = 4, d_ff: int | None = None,
                 context: int | None = None, dropout: float = 0.0):
        super().__init__()
        if task is not None and task != LM_TASK:
            raise ConfigError(f"transformer_lm is a language model and needs task={LM_TASK!r} "
                              f"(e.g. data.source = {{name = \"text\"}}), got task={task!r}")
        shape = check_input_shape("transformer_lm", input_shape)
        if len(shape) != 1:
            raise ConfigError(f"transformer_lm needs 1-D token windows (T,), got input_shape {shape}")
        vocab = check_positive_int("transformer_lm", "num_classes (vocabulary)", num_classes)
        if vocab < 2:
            raise ConfigError(f"transformer_lm: the vocabulary needs >= 2 tokens, got {vocab}")
        d_model = check_positive_int("transformer_lm", "d_model", d_model)
        n_layers = check_positive_int("transformer_lm", "n_layers", n_layers)
        n_heads = check_positive_int("transformer_lm", "n_heads", n_heads)
        d_ff = check_positive_int("transformer_lm", "d_ff", 4 * d_model if d_ff is None else d_ff)
        context = check_positive_int("transformer_lm", "context", shape[0] if context is None else context)
        p = check_dropout("transformer_lm", dropout)
        if d_model % n_heads:
            raise ConfigError(f"transformer_lm: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if context < shape[0]:
            raise ConfigError(f"transformer_lm: context ({context}) is shorter than the data's "
                              f"windows ({shape[0]} tokens); raise model.context or lower the source's context")
        self.n_heads, self.d_ff, self.dropout, self.context = n_heads, d_ff, p, context
        embed = Embedding(vocab, d_model, context, p)
        blocks = [Block(d_model, n_heads, d_ff, p) for _ in range(n_layers)]
        self.layers = nn.Sequential(embed, *blocks, TiedHead(d_model, embed.tokens))
        self._init_weights(n_layers)

    @torch.no_grad()
    def _init_weights(self, n_layers: int) -> None:
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            if name.endswith(("attn.out", "mlp.fc2")):
                m.weight.mul_((2 * n_layers) ** -0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.layers(idx)

    def tp_plan(self, degree: int) -> dict[str, str]:
        """The Megatron-LM split (Shoeybi et al. 2019) of every block over ``degree`` ranks.

        q, k, v and the MLP's first Linear are split by output columns (whole heads per
        rank), the attention output and the MLP's second Linear by input rows; embedding,
        LayerNorms and the tied head stay replicated.

        Returns:
            ``{module path: "colwise" | "rowwise"}``, paths relative to this model.

        Raises:
            ConfigError: n_heads or d_ff not divisible by ``degree``, or dropout > 0
                (ranks draw different dropout masks on the replicated activations).
        """
        if self.n_heads % degree:
            raise ConfigError(f"tensor_parallel: transformer_lm's n_heads ({self.n_heads}) must be "
                              f"divisible by the {degree} workers (each rank computes whole heads)")
        if self.d_ff % degree:
            raise ConfigError(f"tensor_parallel: transformer_lm's d_ff ({self.d_ff}) must be "
                              f"divisible by the {degree} workers")
        if self.dropout > 0:
            raise ConfigError("tensor_parallel: transformer_lm needs dropout = 0 (each rank draws its "
                              "own dropout masks, so the replicated activations would differ)")
        plan: dict[str, str] = {}
        for i, block in enumerate(self.layers):
            if isinstance(block, Block):
                for name in ("attn.q", "attn.k", "attn.v", "mlp.fc1"):
                    plan[f"layers.{i}.{name}"] = "colwise"
                for name in ("attn.out", "mlp.fc2"):
                    plan[f"layers.{i}.{name}"] = "rowwise"
        return plan
