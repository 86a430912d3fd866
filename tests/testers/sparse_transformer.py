from .base import VariantTester

TESTER = VariantTester(
    "efficient_sparse_transformer",
    # strided, l = 6 on the 37-token inputs: 7 blocks (the last partial), both factors merged exactly per head
    # (the log-sum-exp path); tests/test_sparse_transformer.py covers every pattern x combination
    mechanism=dict(pattern="strided", local_size=6, num_summary=2, combination="merged"),
    cpu_backends=("blocked",),
    gpu_backends=("flex",),
    # the fixed pattern (the config's default) cuts positions into absolute blocks; strided is relative
    padding_settings=(dict(pattern="fixed", num_summary=2), dict(pattern="fixed", combination="heads")),
    bad_values=dict(pattern="bogus", local_size=0, num_summary=0, combination="bogus"),
)
