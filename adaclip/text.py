"""Text encoding with the exact trailing-padding trim (METHOD section 6).

CLIP's text transformer is causal and pools at the end-of-text token, so the padding after
it cannot change the embedding. We run the tower on ``tokens[:, :L]`` where ``L`` is the
longest caption of the batch (end token included), and group captions of similar length
into the same batch so that little padding is computed at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def tokenize(texts: Sequence[str], context_length: int) -> Tensor:
    """Tokenise captions with open_clip's BPE tokenizer.

    Args:
        texts: captions.
        context_length: token budget; longer captions are truncated (end token kept).

    Returns:
        LongTensor (B, context_length), zero padded after the end-of-text token.
    """
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = _tokenizer(context_length)
    assert isinstance(tokenizer, SimpleTokenizer)
    return tokenizer(list(texts), context_length=context_length)


_TOKENIZERS: dict[int, object] = {}


def _tokenizer(context_length: int) -> object:
    if context_length not in _TOKENIZERS:
        from open_clip.tokenizer import SimpleTokenizer

        _TOKENIZERS[context_length] = SimpleTokenizer(context_length=context_length)
    return _TOKENIZERS[context_length]


def token_lengths(tokens: Tensor) -> Tensor:
    """Length of each caption including the end token (B,). Padding id is 0."""
    return (tokens != 0).sum(dim=-1)


def encode_text_trimmed(clip_model: nn.Module, tokens: Tensor) -> Tensor:
    """CLIP text embeddings (B, D), un-normalised, computed on trimmed tokens.

    Bit-for-bit the tower's result on the full padded tokens, up to float rounding of the
    smaller matrix products.
    """
    from open_clip.transformer import text_global_pool

    clip: Any = clip_model  # open_clip CLIP; its attributes are untyped
    length = max(int(token_lengths(tokens).max().item()), 1)
    tokens = tokens[:, :length]  # (B, L)
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)  # (B, L, W)
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    attn_mask = getattr(clip, "attn_mask", None)
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    x = clip.transformer(x, attn_mask=attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(
        x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None)
    )
    projection = clip.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x  # (B, D)


def encode_text_grouped(clip_model: nn.Module, tokens: Tensor, batch_size: int = 256) -> Tensor:
    """Encode many captions: sort by length, trim each batch, restore the input order.

    Args:
        clip_model: an open_clip CLIP.
        tokens: (B, L) token ids.
        batch_size: captions per forward pass.

    Returns:
        (B, D) un-normalised text embeddings in the order of ``tokens``.
    """
    if tokens.shape[0] == 0:
        raise ValueError("no captions to encode")
    order = torch.argsort(token_lengths(tokens), stable=True)
    chunks = [
        encode_text_trimmed(clip_model, tokens[order[i : i + batch_size]])
        for i in range(0, tokens.shape[0], batch_size)
    ]
    sorted_emb = torch.cat(chunks)  # (B, D) in length order
    out = torch.empty_like(sorted_emb)
    out[order] = sorted_emb
    return out
