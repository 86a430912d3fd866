"""The tester base: a tiny config in each backbone style, random inputs, global tokens."""

from dataclasses import dataclass, field

import torch

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=0,
)
# a value each backbone field must refuse (a ValueError naming the field) wherever a config is made or loaded;
# tests/test_validation.py fails for a field of a variant's config without one here or in its tester's bad_values
BACKBONE_BAD_VALUES = dict(
    vocab_size=0, hidden_size=0, num_hidden_layers=0, num_attention_heads=0, num_key_value_heads=3, head_dim=0,
    intermediate_size=-1, hidden_act="bogus", mlp_type="bogus", norm_type="bogus", norm_position="middle",
    layer_norm_eps=-1.0, attention_bias="yes", mlp_bias="yes", position_embedding_type="bogus",
    max_position_embeddings=0, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    type_vocab_size=-1, embedding_norm="yes", embedding_size=0, hidden_dropout_prob=1.5,
    attention_probs_dropout_prob=-0.1, classifier_dropout=1.0, initializer_range=-0.02, is_causal="yes",
    use_pooler="yes", pooler_act="bogus", classifier_pooling="middle", masked_lm_transform="yes", lm_head_bias=1,
    tie_word_embeddings="yes", pad_token_id=-1, bos_token_id=1.5, eos_token_id=[2, "3"], use_cache="yes",
    attention_backend="bogus",
)
# the three backbone styles every variant must run in (where the mechanism allows the direction)
STYLES = {
    "bert": dict(),
    "gpt2": dict(norm_position="pre", embedding_norm=False, type_vocab_size=0, hidden_act="gelu_new", is_causal=True,
                 use_pooler=False, masked_lm_transform=False, lm_head_bias=False, layer_norm_eps=1e-5),
    "llama": dict(norm_type="rmsnorm", norm_position="pre", position_embedding_type="rotary", mlp_type="gated",
                  hidden_act="silu", num_key_value_heads=2, embedding_norm=False, type_vocab_size=0, is_causal=True,
                  attention_bias=False, mlp_bias=False, use_pooler=False, masked_lm_transform=False,
                  lm_head_bias=False, layer_norm_eps=1e-6),
}


@dataclass
class VariantTester:
    model_type: str
    mechanism: dict = field(default_factory=dict)  # variant knobs small enough that the pattern is really sparse
    cpu_backends: tuple[str, ...] = ("blocked",)  # fast paths that run (forward and backward) on CPU
    gpu_backends: tuple[str, ...] = ()  # fast paths that need CUDA
    length: int = 37  # longer than the tiny window, not a multiple of it
    # how close the config's full_attention_overrides come to exact softmax attention: ~1e-5 where exact (window
    # covering everything, identity projections), larger where approximate (random features); None = the method
    # has no such setting (full_attention_overrides raises NotImplementedError)
    degenerate_tolerance: float | None = 1e-5
    # further settings of the mechanism (overrides of `mechanism`) that the padding tests also run: those whose
    # pattern or tables depend on absolute positions in another way than the tester's own setting
    padding_settings: tuple[dict, ...] = ()
    # a value each of the variant's own knobs must refuse (see BACKBONE_BAD_VALUES)
    bad_values: dict = field(default_factory=dict)
    # parameter-name fragments that one memoryless pass cannot train (the Compressive Transformer's compression
    # network learns only from states leaving a memory): the gradient test skips them; the variant's tests cover them
    trained_only_with_memory: tuple[str, ...] = ()
    # True where the converted model, as saved, computes its source on one memoryless pass (no knob of the method
    # acts within it): tests/test_every_target.py then checks that equality instead of a difference
    as_converted_equals_source: bool = False
    # the model reads token ids; False for a model over other inputs (sets of feature vectors), whose tester makes its
    # own inputs and whose common tests built on token ids (LM heads, positions, conversion) say they don't apply
    token_inputs: bool = True
    # output_attentions gives one (batch, heads, queries, keys) tensor per layer (the cost warning's arithmetic)
    attention_weights_per_layer: bool = True

    def config(self, style: str = "bert", **overrides):
        import hf_efficient

        variant = hf_efficient.VARIANTS[self.model_type]
        return variant.config(**{**TINY, **STYLES[style], **self.mechanism, **overrides})

    def inputs(self, config, batch: int = 3, length: int | None = None, padded: bool = True, seed: int = 0) -> dict:
        """Random ids (never the pad id), right padding on some rows, global tokens where supported."""
        length = length or self.length
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(1, config.vocab_size, (batch, length), generator=generator)
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        if padded and batch > 1:
            attention_mask[1, length - 7:] = 0
            attention_mask[-1, length // 3:] = 0
            input_ids[attention_mask == 0] = config.pad_token_id
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def pad_right(self, inputs: dict, config, extra: int) -> dict:
        """`inputs` with `extra` padding positions appended to every row."""
        pad = torch.nn.functional.pad
        return {"input_ids": pad(inputs["input_ids"], (0, extra), value=config.pad_token_id),
                "attention_mask": pad(inputs["attention_mask"], (0, extra), value=0)}

    def empty_inputs(self, config, batch: int, length: int) -> dict:
        return {"input_ids": torch.ones(batch, length, dtype=torch.long)}

    def bad_inputs(self, config) -> list[tuple[dict, str]]:
        """(inputs, regular expression of the ValueError they must raise)."""
        ids = torch.randint(1, config.vocab_size, (2, 20))
        limit = config.max_position_embeddings
        return [
            ({"input_ids": torch.randint(1, config.vocab_size, (1, limit + 1))}, "max_position_embeddings"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 19)}, "shape"),
            ({"input_ids": ids, "attention_mask": torch.ones(2, 1, 20, 20)}, "shape"),
            ({"input_ids": ids, "attention_mask": torch.full((2, 20), -1e9)}, "only 0 and 1"),
            ({}, "exactly one"),
        ]

    def global_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(input_ids)
        mask[0, 0] = 1
        mask[0, input_ids.shape[1] // 2] = 1
        if input_ids.shape[0] > 1:
            mask[1, 3] = 1
        return mask


def enable_activation_checkpointing(model) -> None:
    """transformers 5.24 renamed gradient_checkpointing_enable (now deprecated) to activation_checkpointing_enable."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
