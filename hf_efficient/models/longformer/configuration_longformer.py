"""Configuration of EfficientLongformer (Beltagy et al., arXiv 2004.05150)."""

from ...core.configuration import EfficientConfig


class EfficientLongformerConfig(EfficientConfig):
    """Backbone fields plus Longformer's knobs.

    attention_window: the full window per layer (an int for all layers, or one per layer); each token sees
        window/2 tokens on each side (only the earlier half when causal). Positive and even, as in the paper.
    attention_dilation: per-layer dilation d: the window's keys are spaced d apart, so it reaches window/2 * d.
    global_first_token: make the first token ([CLS]) global in every forward, in addition to any
        `global_attention_mask` (the paper's classification recipe; handy when a data collator can't pad a
        global_attention_mask column). Not applied during cached decoding.
    """

    model_type = "efficient_longformer"

    attention_window: int | list[int] = 512
    attention_dilation: int | list[int] = 1
    global_first_token: bool = False

    def validate_mechanism(self) -> None:
        self.attention_window = self.per_layer(self.attention_window, "attention_window")
        self.attention_dilation = self.per_layer(self.attention_dilation, "attention_dilation")
        for layer, window in enumerate(self.attention_window):
            if not isinstance(window, int) or window <= 0 or window % 2:
                raise ValueError(
                    f"attention_window[{layer}]={window!r}: each window must be a positive even integer "
                    "(window/2 tokens on each side), e.g. 512."
                )
        for layer, dilation in enumerate(self.attention_dilation):
            if not isinstance(dilation, int) or dilation <= 0:
                raise ValueError(f"attention_dilation[{layer}]={dilation!r}: use a positive integer (1 = none).")

    @classmethod
    def full_attention_overrides(cls, length: int) -> dict:
        """A window of 2*length (length-1 tokens or more on each side) and no dilation is full attention."""
        return {"attention_window": 2 * length, "attention_dilation": 1}

    def describe_attention(self) -> str:
        return (f"sliding window {sorted(set(self.attention_window))} (per layer), dilation "
                f"{sorted(set(self.attention_dilation))}, global tokens through `global_attention_mask` with their "
                "own q/k/v projections" + (", the first token always global" if self.global_first_token else ""))
