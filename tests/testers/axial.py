from dataclasses import dataclass

import torch

from .base import STYLES, VariantTester

# the tiny model of the common suite: 4 x 4 RGB images of 7 levels (48 sub-pixels), hidden 32
AXIAL_TINY = dict(image_size=4, num_channels=3, num_levels=7, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, initializer_range=0.2)


@dataclass
class AxialTester(VariantTester):
    """Images as intensity ids in raster order: "bert" is the bidirectional encoder over sub-pixels (no bos); "gpt2"
    and "llama" the causal decoder over [bos, sub-pixels...] (Llama's style with the axial learned positions in place
    of rotary). Random levels stay below num_levels - 1, so the common causality test's `id % (vocab - 1) + 1` stays
    an intensity (never bos)."""

    def config(self, style: str = "bert", **overrides):
        import hf_efficient

        fields = {**STYLES[style], "is_causal": style != "bert"}
        if style == "llama":
            fields["position_embedding_type"] = "absolute"
        return hf_efficient.EfficientAxialConfig(**{**AXIAL_TINY, **fields, **self.mechanism, **overrides})

    def inputs(self, config, batch: int = 3, length: int | None = None, padded: bool = True, seed: int = 0) -> dict:
        """Random levels, right padding on some rows (the padded ids random too: they must not matter)."""
        length = length or self.length
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, config.num_levels - 1, (batch, length), generator=generator)
        if config.is_causal:
            input_ids[:, 0] = config.bos_token_id
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        if padded and batch > 1:
            attention_mask[1, length - 7:] = 0
            attention_mask[-1, length // 3:] = 0
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def pad_right(self, inputs: dict, config, extra: int) -> dict:
        ids = inputs["input_ids"]
        noise = torch.randint(0, config.num_levels, (ids.shape[0], extra), generator=torch.Generator().manual_seed(7))
        return {"input_ids": torch.cat([ids, noise], dim=1),
                "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, extra), value=0)}

    def empty_inputs(self, config, batch: int, length: int) -> dict:
        return {"input_ids": torch.zeros(batch, length, dtype=torch.long)}

    def bad_inputs(self, config) -> list[tuple[dict, str]]:
        """For the encoder (the first style)."""
        ids = torch.randint(0, config.num_levels, (2, 20))
        return [
            ({"input_ids": torch.zeros(1, config.num_subpixels + 1, dtype=torch.long)}, "image_size"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 19)}, "shape"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 1, 20, 20)}, "shape"),
            ({"input_ids": ids, "attention_mask": torch.full((2, 20), -1e9)}, "only 0 and 1"),
            ({"input_ids": ids, "attention_mask": torch.zeros(2, 20)}, "at least one"),
            ({"input_ids": ids.clamp(max=0) + config.bos_token_id}, "num_levels"),
            ({"input_ids": ids, "class_labels": torch.zeros(2, dtype=torch.long)}, "unconditional"),
            ({"input_ids": ids, "pixel_values": torch.zeros(2, 3, 4, 4)}, "pixel_values"),
            ({}, "exactly one"),
        ]


TESTER = AxialTester(
    "efficient_axial",
    cpu_backends=("blocked",),  # sdpa over the lines of each axis; also the CUDA path
    gpu_backends=(),
    # no setting of an axial model is full attention over the sequence (a 1 x N image with one channel makes row
    # attention full 1D attention, but the model's embeddings, shifts and blocks are not the token backbone's)
    degenerate_tolerance=None,
    attention_weights_per_layer=False,
    # intensity ids at fixed grid positions: a token's position is its place in the image, so the left-padding suite's
    # premise (a prompt padded on either side keeps its outputs) does not hold; right padding is covered by the common
    # suite, and the causal model refuses left padding (tests/test_axial.py)
    token_inputs=False,  # one (N x N) map per block, several blocks per layer
    bad_values=dict(image_size=0, num_channels=2, num_levels=1, num_classes=-1, num_channel_layers=-1),
)
