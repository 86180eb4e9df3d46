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


EOT_TOKEN_ID = 49407  # open_clip's BPE end-of-text id (the largest id of its vocabulary)


def token_lengths(tokens: Tensor, eot_token_id: int = EOT_TOKEN_ID) -> Tensor:
    """Length of each caption up to and including its end-of-text token (B,).

    The position of the first end-of-text token decides, not a count of non-zero ids: id 0
    is a real BPE token ("!"), so counting non-zero ids would cut captions that contain it
    before their end token. A row without an end token keeps its full length.
    """
    is_eot = tokens == eot_token_id  # (B, L)
    first = is_eot.int().argmax(dim=-1) + 1  # (B,)
    full = torch.full_like(first, tokens.shape[-1])
    return torch.where(is_eot.any(dim=-1), first, full)


def encode_text_trimmed(clip_model: nn.Module, tokens: Tensor) -> Tensor:
    """CLIP text embeddings (B, D), un-normalised, computed on trimmed tokens.

    Bit-for-bit the tower's result on the full padded tokens, up to float rounding of the
    smaller matrix products.
    """
    from open_clip.transformer import text_global_pool

    clip: Any = clip_model  # open_clip CLIP; its attributes are untyped
    if clip.text_pool_type in ("argmax", "eos"):  # pooled at the end token: trim after it
        eot = getattr(clip, "text_eos_id", None) or EOT_TOKEN_ID
        length = max(int(token_lengths(tokens, eot).max().item()), 1)
        tokens = tokens[:, :length]  # (B, L)
    length = tokens.shape[1]
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


def length_grouped_batches(lengths: Tensor, max_tokens: int, max_batch: int) -> list[Tensor]:
    """Split caption indices into batches of similar length.

    Captions are sorted by length; a batch grows while ``size * longest <= max_tokens`` and
    ``size <= max_batch``, so padding is at most the spread of lengths inside one batch.

    Returns:
        index tensors, one per batch, covering every caption exactly once.
    """
    order = torch.argsort(lengths, stable=True).tolist()
    batches: list[Tensor] = []
    current: list[int] = []
    for i in order:
        longest = max(int(lengths[i]), 1)  # ascending order: this caption is the longest
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_batch):
            batches.append(torch.tensor(current))
            current = []
        current.append(i)
    if current:
        batches.append(torch.tensor(current))
    return batches


def encode_text_grouped(
    clip_model: nn.Module, tokens: Tensor, max_tokens: int = 4096, max_batch: int = 512
) -> Tensor:
    """Encode many captions in length-grouped, trimmed batches; keep the input order.

    Args:
        clip_model: an open_clip CLIP.
        tokens: (B, L) token ids.
        max_tokens: token budget of one forward pass (batch size x trimmed length).
        max_batch: most captions in one forward pass.

    Returns:
        (B, D) un-normalised text embeddings in the order of ``tokens``.
    """
    if tokens.shape[0] == 0:
        raise ValueError("no captions to encode")
    eot = getattr(clip_model, "text_eos_id", None) or EOT_TOKEN_ID
    batches = length_grouped_batches(token_lengths(tokens, eot).cpu(), max_tokens, max_batch)
    out: Tensor | None = None
    for idx in batches:
        idx = idx.to(tokens.device)
        emb = encode_text_trimmed(clip_model, tokens[idx])  # (b, D)
        if out is None:
            out = emb.new_empty((tokens.shape[0], emb.shape[1]))
        out[idx] = emb
    assert out is not None
    return out
