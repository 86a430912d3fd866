from dataclasses import dataclass

import torch

from .base import VariantTester

# the tiny model of the common suite: sizes as the other testers' TINY, sets of 2-d points
SET_TINY = dict(input_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                num_decoder_layers=1, initializer_range=0.2)


@dataclass
class SetTransformerTester(VariantTester):
    """Sets of feature vectors instead of token ids: `input_features` (batch, set size, input_size) with a padding
    mask. Its one style is "bert" (the only direction a set model has: bidirectional, post-norm, the paper's MAB)."""

    def config(self, style: str = "bert", **overrides):
        import hf_efficient

        if style != "bert":
            raise ValueError(f"a set model has no {style!r} style (no causal mode)")
        return hf_efficient.EfficientSetTransformerConfig(**{**SET_TINY, **self.mechanism, **overrides})

    def inputs(self, config, batch: int = 3, length: int | None = None, padded: bool = True, seed: int = 0) -> dict:
        """Random points, padding on some rows (at the end of row 1, in the middle of the last row: a set has no
        order, so padding may sit anywhere), whose features are random too (they must not matter)."""
        length = length or self.length
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(batch, length, config.input_size, generator=generator)
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        if padded and batch > 1:
            attention_mask[1, length - 7:] = 0
            attention_mask[-1, length // 3: 2 * length // 3] = 0
        return {"input_features": features, "attention_mask": attention_mask}

    def pad_right(self, inputs: dict, config, extra: int) -> dict:
        batch = inputs["input_features"].shape[0]
        noise = torch.randn(batch, extra, config.input_size, generator=torch.Generator().manual_seed(7)) * 100
        return {"input_features": torch.cat([inputs["input_features"], noise], dim=1),
                "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, extra), value=0)}

    def empty_inputs(self, config, batch: int, length: int) -> dict:
        return {"input_features": torch.ones(batch, length, config.input_size)}

    def bad_inputs(self, config) -> list[tuple[dict, str]]:
        features = torch.randn(2, 20, config.input_size)
        return [
            ({"input_features": torch.randn(2, 20, config.input_size + 1)}, "shape"),
            ({"input_features": torch.randn(2, 20)}, "shape"),
            ({"input_features": features, "attention_mask": torch.ones(2, 19)}, "shape"),
            ({"input_features": features, "attention_mask": torch.ones(2, 1, 20, 20)}, "shape"),
            ({"input_features": features, "attention_mask": torch.full((2, 20), -1e9)}, "only 0 and 1"),
            ({"input_features": features, "attention_mask": torch.zeros(2, 20)}, "at least one element"),
            ({"input_ids": torch.ones(2, 20, dtype=torch.long)}, "not tokens"),
            ({}, "exactly one"),
        ]


TESTER = SetTransformerTester(
    "efficient_set_transformer",
    # ISAB with 4 inducing points and PMA with 2 seeds on sets of 37: the attention maps are 37 x 4, never 37 x 37
    mechanism=dict(encoder_block="isab", num_inducing_points=4, num_seeds=2),
    cpu_backends=("blocked",),  # sdpa through transformers' interface; also the CUDA path (no set-specific kernel)
    gpu_backends=(),
    # ISAB is not full attention under any setting, and its full-attention form (SAB) has no token backbone twin;
    # SAB = the paper's MAB(X, X) is checked against a BERT-style layer in tests/test_set_transformer.py
    degenerate_tolerance=None,
    token_inputs=False,
    attention_weights_per_layer=False,  # an ISAB layer gives two maps, (m x n) and (n x m)
    bad_values=dict(input_size=0, encoder_block="bogus", num_inducing_points=0, num_seeds=0, num_decoder_layers=-1,
                    use_layer_norm="yes"),
)
