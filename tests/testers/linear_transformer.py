from .base import VariantTester

TESTER = VariantTester(
    "efficient_linear_transformer",
    mechanism=dict(causal_chunk_size=8),  # several chunks and a partial last one on the 37-token inputs
    cpu_backends=("blocked",),  # the chunked (causal) / closed-form (bidirectional) PyTorch paths, also the GPU path
    degenerate_tolerance=None,  # the elu(x)+1 kernel never equals softmax attention
    bad_values=dict(linear_attention_eps=0.0, causal_chunk_size=0),
)
