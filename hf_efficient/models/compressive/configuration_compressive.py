"""Configuration of EfficientCompressive (Rae et al., "Compressive Transformers for Long-Range Sequence Modelling",
ICLR 2020, arXiv 1911.05507)."""

from ...attention.compressive import COMPRESSIONS
from ..transformer_xl.configuration_transformer_xl import EfficientTransformerXLConfig


class EfficientCompressiveConfig(EfficientTransformerXLConfig):
    """Transformer-XL's fields (mem_len, clamp_len, relative_attention, ...) plus the compressed memory.

    cmem_len: compressed states kept per layer (the paper: as many as mem_len, e.g. 512 / 512 on enwik8). 0 = none:
        the model is then exactly EfficientTransformerXL.
    compression_rate: c, how many memory states make one compressed state (the paper: 3 on enwik8, 2-4 elsewhere).
    compression: "conv" (the paper's best: a 1D convolution, kernel = stride = c, trained by the reconstruction
        loss), "mean" or "max" (pooling over c states, no parameters).
    reconstruction_loss_weight: the causal-LM head adds this times the attention-reconstruction loss to its loss
        when it computes one (labels given, states compressed in this call, gradients or training on). Its gradient
        reaches only the compression network, so the weight acts as that network's learning-rate factor.
    """

    model_type = "efficient_compressive"

    cmem_len: int = 256
    compression_rate: int = 3
    compression: str = "conv"
    reconstruction_loss_weight: float = 1.0

    def validate_mechanism(self) -> None:
        super().validate_mechanism()
        for name, value, least in (("cmem_len", self.cmem_len, 0), ("compression_rate", self.compression_rate, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r}: use an integer >= {least}.")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression={self.compression!r}: use one of {', '.join(COMPRESSIONS)}.")
        weight = self.reconstruction_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 \
                or weight == float("inf"):
            raise ValueError(f"reconstruction_loss_weight={weight!r}: use a finite number >= 0 (0 = report the loss "
                             "without training the compression).")
        if self.cmem_len and self.same_length:
            raise ValueError("same_length=True limits every query to mem_len keys, so the compressed memory would "
                             "never be read; set same_length=False or cmem_len=0.")
        if self.cmem_len and self.mem_len < 1:
            raise ValueError("The compressed memory holds states that left the memory; give mem_len >= 1 or set "
                             "cmem_len=0.")

    def describe_attention(self) -> str:
        compressed = f"; compressed memory of {self.cmem_len} states ({self.compression}, rate " \
                     f"{self.compression_rate})" if self.cmem_len else "; no compressed memory"
        return "Compressive Transformer: " + super().describe_attention().replace(" (causal)", "") + compressed + \
            " (causal)"
