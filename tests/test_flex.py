"""The compiled FlexAttention path stays compiled across many shapes and masks (no silent eager fallback)."""

import warnings

import pytest
import torch

from hf_efficient.attention.flex import flex_attend


def local_mask(window: int):
    """A mask_mod closing over its window, like the library's (a closure cell, not a default argument)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= window

    return mask_mod


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_many_lengths_and_masks_stay_compiled():
    """Past dynamo's default recompile limit (8) torch.compile would fall back to eager flex_attention, which
    materialises the N x N scores and warns; 6 lengths x 2 mask functions must all run compiled and be exact."""
    from torch.nn.attention.flex_attention import create_block_mask

    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator(device="cuda").manual_seed(0)
    for length in range(128, 128 * 7, 128):
        for window in (64, 192):
            query, key, value = (torch.randn(1, 2, length, 16, device="cuda", generator=generator) for _ in range(3))
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # how the eager fallback announces itself
                mask = create_block_mask(local_mask(window), None, None, length, length, device=query.device)
                out = flex_attend(query, key, value, mask, 0.25)
            positions = torch.arange(length, device="cuda")
            allowed = (positions[:, None] - positions[None, :]).abs() <= window
            scores = (query @ key.transpose(-1, -2) * 0.25).masked_fill(~allowed, float("-inf"))
            reference = (scores.softmax(-1) @ value).transpose(1, 2)
            torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4, msg=f"length {length} window {window}")
