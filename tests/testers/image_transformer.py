from dataclasses import dataclass

import torch

from .base import STYLES, VariantTester

# the tiny model of the common suite: 4 x 4 RGB images of 16 levels (1 + 48 positions), sizes as TINY's
IMAGE_TINY = dict(image_size=4, num_channels=3, num_levels=16, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
PAD = 0  # padding positions hold level 0 (masked, never read)


@dataclass
class ImageTransformerTester(VariantTester):
    """Images as [bos, sub-pixels in raster order]: the rows start with bos and hold levels, padded on the right.
    Its styles are the decoder ones ("bert", which the suite uses for style-free checks, is taken as "gpt2")."""

    def config(self, style: str = "bert", **overrides):
        import hf_efficient

        style_fields = {k: v for k, v in STYLES["gpt2" if style == "bert" else style].items()
                        if k not in ("position_embedding_type", "type_vocab_size", "is_causal")}
        if style == "llama":
            style_fields["position_embedding_type"] = "rotary"
        return hf_efficient.EfficientImageTransformerConfig(**{**IMAGE_TINY, **style_fields, **self.mechanism,
                                                               **overrides})

    def inputs(self, config, batch: int = 3, length: int | None = None, padded: bool = True, seed: int = 0) -> dict:
        length = length or self.length
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, config.num_levels, (batch, length), generator=generator)
        input_ids[:, 0] = config.bos_token_id
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        if padded and batch > 1:
            attention_mask[1, length - 7:] = 0
            attention_mask[-1, length // 3:] = 0
            input_ids[attention_mask == 0] = PAD
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def pad_right(self, inputs: dict, config, extra: int) -> dict:
        pad = torch.nn.functional.pad
        return {"input_ids": pad(inputs["input_ids"], (0, extra), value=PAD),
                "attention_mask": pad(inputs["attention_mask"], (0, extra), value=0)}

    def empty_inputs(self, config, batch: int, length: int) -> dict:
        return {"input_ids": torch.full((batch, length), config.bos_token_id, dtype=torch.long)}

    def bad_inputs(self, config) -> list[tuple[dict, str]]:
        ids = self.inputs(config, batch=2, length=20, padded=False)["input_ids"]
        no_bos, late_bos = ids.clone(), ids.clone()
        no_bos[1, 0] = 3
        late_bos[0, 5] = config.bos_token_id
        left = torch.ones(2, 20)
        left[1, :3] = 0
        return [
            ({"input_ids": torch.zeros(1, config.max_position_embeddings + 1, dtype=torch.long)}, "image_size"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 19)}, "shape"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 1, 20, 20)}, "shape"),
            ({"input_ids": ids, "attention_mask": torch.full((2, 20), -1e9)}, "only 0 and 1"),
            ({"input_ids": no_bos}, "bos_token_id"),
            ({"input_ids": late_bos}, "intensity levels"),
            ({"input_ids": ids, "attention_mask": left}, "padding_side"),
            ({"input_ids": ids, "class_labels": torch.zeros(2, dtype=torch.long)}, "unconditional"),
            ({}, "exactly one"),
        ]


TESTER = ImageTransformerTester(
    "efficient_image_transformer",
    # local 1D, blocks of 5 sub-pixels with a memory of 4, on 30 of the 49 positions: every row sees at most 10 keys
    mechanism=dict(attention_type="local_1d", query_block_length=5, memory_length=4),
    cpu_backends=("blocked",),
    gpu_backends=("flex",),
    length=30,
    padding_settings=(dict(attention_type="local_2d", query_shape=[2, 2], memory_flange=[1, 1]),),
    # exact full causal attention with a covering block is proven in tests/test_image_transformer.py (the image
    # embeddings have no twin in the token backbone the common test compares with)
    degenerate_tolerance=None,
    token_inputs=False,
    bad_values=dict(image_size=0, num_channels=2, num_levels=1, num_classes=-1, attention_type="bogus",
                    query_block_length=0, memory_length=-1, query_shape=[0, 2], memory_flange=[1, -1]),
)
