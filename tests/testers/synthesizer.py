from .base import VariantTester

TESTER = VariantTester(
    "efficient_synthesizer",
    # the paper's dense + random + dot-product mixture with trainable alphas (alpha_vanilla != 1 so the query scaling is
    # exercised); the blocked path hands it to sdpa/eager with the synthetic logits as an additive mask. The pure
    # synthetic kinds (their own softmax) are checked against the reference in tests/test_synthesizer.py.
    mechanism=dict(synthesizer_type="dense+random+vanilla", mixture_weights=[0.7, 1.0, 0.8]),
    cpu_backends=("blocked",),
    gpu_backends=(),  # the blocked path is matmuls + sdpa and is also the GPU path
    # the factorized tables, and the pure synthetic path (its own softmax, no dot product)
    padding_settings=(dict(synthesizer_type="factorized_dense+factorized_random", mixture_weights=None),),
    bad_values=dict(synthesizer_type="bogus", mixture_weights=[1.0], mixture_trainable="yes", random_trainable="yes",
                    random_init_std=0.0, factorized_random_rank=0, factorized_dense_a=0, dense_hidden_size=0, seed=-1,
                    dot_product_only="yes"),
)
