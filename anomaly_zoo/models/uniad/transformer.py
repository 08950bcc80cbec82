"""UniAD's reconstruction transformer: neighbour-masked encoder + layer-wise query decoder.

Tokens are batch-first, (B, N, C) with N = H·W ordered t = h·W + w. Post-norm layers, ReLU FFN, dropout as
in DETR-style transformers. The neighbour mask and the position-index tables are built once (buffers, they
follow ``.to(device)``); nothing is rebuilt per step.

Parameter names differ from the authors' where theirs mislead (their decoder's ``self_attn`` attends the encoder
output, not the queries); ``convert.py`` holds the one-to-one mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.models.uniad.neighbor_mask import additive_mask, neighbor_mask


class LearnedPositionEmbedding(nn.Module):
    """Learned 2-D table: ``pos[h·W + w] = [col[w] ‖ row[h]]`` (column half first), both initialised U[0, 1)."""

    def __init__(self, height: int, width: int, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"hidden_dim must be even for the 2-D position embedding, got {dim}.")
        self.row_embed = nn.Embedding(height, dim // 2)
        self.col_embed = nn.Embedding(width, dim // 2)
        # Index tables are fixed: cached once instead of rebuilt with arange/cat per forward.
        self.register_buffer("row_index", torch.arange(height).repeat_interleave(width), persistent=False)
        self.register_buffer("col_index", torch.arange(width).repeat(height), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        """The (N, C) table (differentiable: it is learned)."""
        return torch.cat([self.col_embed.weight[self.col_index], self.row_embed.weight[self.row_index]], dim=-1)


class NeighborMaskedAttention(nn.Module):
    """Multi-head attention with packed ``[W_q; W_k; W_v]`` projections (the layout of ``nn.MultiheadAttention``).

    ``forward(query, key, value, allowed)``: (Bq, N, C), (B, M, C), (B, M, C) with Bq ∈ {1, B} (a batch-free
    query is projected once and broadcast); ``allowed`` is a boolean (N, M) table, ``True`` = may attend, an
    additive float bias (0 = attend, −inf = blocked; the cheaper form, no conversion per call), or ``None``. Dropout acts on the attention probabilities, as in ``nn.MultiheadAttention``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        w, b = self.in_proj_weight, self.in_proj_bias
        d = self.dim
        if query is key:  # self-attention: one matmul for q and k
            q, k = F.linear(query, w[: 2 * d], b[: 2 * d]).chunk(2, dim=-1)
        else:
            q = F.linear(query, w[:d], b[:d])
            k = F.linear(key, w[d : 2 * d], b[d : 2 * d])
        v = F.linear(value, w[2 * d :], b[2 * d :])
        if q.shape[0] != k.shape[0]:
            q = q.expand(k.shape[0], -1, -1)
        return self._heads(q), self._heads(k), self._heads(v)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self._project(query, key, value)
        if allowed is not None and allowed.is_floating_point() and allowed.dtype != q.dtype:
            allowed = allowed.to(q.dtype)  # autocast
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.dim))


class FeedForward(nn.Module):
    """linear1 → ReLU → dropout → linear2 (the residual dropout and norm live in the layer)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """``h = LN1(h + Drop(MHA(h+pos, h+pos, h)))``; ``h = LN2(h + Drop(FFN(h)))``."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = NeighborMaskedAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(qk, qk, x, allowed)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class DecoderLayer(nn.Module):
    """One layer of the layer-wise query decoder; it owns its learned query table.

    ``t = LN1(q + Drop(MHA(q+pos, enc+pos, enc)))`` — the layer's own queries attend the encoder output;
    ``t = LN2(t + Drop(MHA(t+pos, prev+pos, prev)))`` — then the previous decoder layer's output;
    ``t = LN3(t + Drop(FFN(t)))``. No self-attention among the queries.
    """

    def __init__(self, num_queries: int, dim: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(num_queries, dim))
        self.encoder_attn = NeighborMaskedAttention(dim, num_heads, dropout)
        self.previous_attn = NeighborMaskedAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        nn.init.normal_(self.query)  # nn.Embedding's default, as the authors' table

    def forward(
        self,
        previous: torch.Tensor,
        memory: torch.Tensor,
        memory_with_pos: torch.Tensor,
        pos: torch.Tensor,
        allowed_encoder: torch.Tensor | None,
        allowed_previous: torch.Tensor | None,
    ) -> torch.Tensor:
        query = self.query.unsqueeze(0)  # (1, N, C): batch-free, projected once
        t = self.encoder_attn(query + pos, memory_with_pos, memory, allowed_encoder)
        t = self.norm1(query + self.dropout1(t))
        t = self.norm2(t + self.dropout2(self.previous_attn(t + pos, previous + pos, previous, allowed_previous)))
        return self.norm3(t + self.dropout3(self.ffn(t)))


class ReconstructionTransformer(nn.Module):
    """input_proj → encoder (neighbour-masked) → layer-wise query decoder → final LN → output_proj.

    Args:
        in_channels: channels of the feature tokens (272 for UniAD's four EfficientNet-B4 taps).
        feature_size: (H, W) of the token grid.
        hidden_dim, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout: as named.
        neighbor_size: side of the masked window (odd), or ``None`` for no neighbour mask.
        mask_attentions: whether the mask applies to [encoder, decoder→encoder, decoder→previous].
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: tuple[int, int] = (14, 14),
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        neighbor_size: int | None = 7,
        mask_attentions: tuple[bool, bool, bool] = (True, True, True),
    ) -> None:
        super().__init__()
        if num_decoder_layers < 1:
            raise ValueError("num_decoder_layers must be ≥ 1.")
        if len(mask_attentions) != 3:
            raise ValueError(f"mask_attentions needs 3 flags [encoder, decoder→encoder, decoder→previous], got {mask_attentions}.")
        h, w = feature_size
        self.feature_size = (h, w)
        self.mask_attentions = tuple(bool(m) for m in mask_attentions)
        self.input_proj = nn.Linear(in_channels, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, in_channels)
        self.pos_embed = LearnedPositionEmbedding(h, w, hidden_dim)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout) for _ in range(num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(h * w, hidden_dim, num_heads, dim_feedforward, dropout) for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        # Cached once as the additive 0/−inf bias the attentions use. Not saved in checkpoints: a pure
        # function of the options.
        blocked = None if neighbor_size is None else neighbor_mask(h, w, neighbor_size)
        self.register_buffer("attn_bias", None if blocked is None else additive_mask(blocked), persistent=False)
        for linear in (self.input_proj, self.output_proj, *[m for m in self.modules() if isinstance(m, FeedForward)]):
            for sub in linear.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight)
                    nn.init.zeros_(sub.bias)

    def masks(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The additive mask for [encoder, decoder→encoder, decoder→previous] (``None`` = unmasked)."""
        return tuple(self.attn_bias if use else None for use in self.mask_attentions)  # type: ignore[return-value]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, in_channels) → reconstructed (B, N, in_channels)."""
        mask_enc, mask_dec_enc, mask_dec_prev = self.masks()
        pos = self.pos_embed().unsqueeze(0)  # (1, N, C), computed once for all 3·L attentions
        x = self.input_proj(tokens)
        for layer in self.encoder_layers:
            x = layer(x, pos, mask_enc)
        memory, memory_with_pos = x, x + pos
        out = memory  # layer 0 attends the encoder output in both attentions
        for layer in self.decoder_layers:
            out = layer(out, memory, memory_with_pos, pos, mask_dec_enc, mask_dec_prev)
        return self.output_proj(self.decoder_norm(out))
