from .base import VariantTester

TESTER = VariantTester(
    "efficient_performer",
    # 8 features (one orthogonal block at head_dim 8) are far from softmax; chunks of 8 cut the 37 tokens into 5
    # causal chunks, the last one partial. initializer_range 0.04 (not 0.02) gives the tiny models attention logits
    # large enough that attention is not nearly uniform: at 0.02 every kernel looks alike (8 features are within
    # 1e-3 of softmax in the bert style) and the degenerate check would prove little.
    mechanism=dict(nb_features=8, chunk_size=8, initializer_range=0.04),
    cpu_backends=("blocked",),
    gpu_backends=("compiled",),  # torch.compile of the blocked path's functions (bidirectional and causal chunks)
    # full_attention_overrides = 8192 softmax-kernel features. Measured on the common test's tiny models, feature
    # seeds 0-2, max |difference| of last_hidden_state to exact softmax attention: bert 1.4e-4..2.2e-4, gpt2
    # 5.2e-3..7.3e-3, llama 6.8e-3..9.2e-3 (the 8-feature models are 7.8e-3..0.32 off). FAVOR+ is an unbiased
    # estimate with error ~ 1/sqrt(m), so no setting is exact: 2e-2 is about twice the worst measured figure.
    degenerate_tolerance=2e-2,
    bad_values=dict(nb_features=0, kernel="bogus", orthogonal_features="yes", feature_norms="bogus", feature_seed=-1,
                    chunk_size=0),
)
