from dataclasses import dataclass

from .base import VariantTester


@dataclass
class TransformerXLTester(VariantTester):
    def config(self, style: str = "bert", **overrides):
        """The styles as the backbone means them: GPT-2 with its learned positions (Transformer-XL's own default is
        none, the paper's setting, tested in tests/test_transformer_xl.py), Llama with rotary ones."""
        if style == "gpt2":
            overrides = {"position_embedding_type": "absolute", **overrides}
        return super().config(style, **overrides)


TESTER = TransformerXLTester(
    "efficient_transformer_xl",
    # same_length with a memory shorter than the inputs (37 tokens): every query sees a window of 16 hidden states,
    # so cached decoding (memory of 16) equals a full pass exactly while really dropping the past, and a converted
    # model (relative terms zero) differs from its source as converted; distances clamped at 10 inside the window.
    # The default mode (no window, memory across calls) is tested in tests/test_transformer_xl.py.
    mechanism=dict(mem_len=16, clamp_len=10, same_length=True),
    cpu_backends=("blocked",),  # SDPA with the relative term as a bias: also the CUDA path
    bad_values=dict(mem_len=-1, clamp_len=0, same_length="yes", relative_attention="yes", embedding_multiplier=0.0,
                    adaptive_cutoffs=[5, 3], adaptive_div_val=0, adaptive_tie_projections=[True]),
)
