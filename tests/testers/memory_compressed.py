from .base import VariantTester

TESTER = VariantTester(
    "efficient_memory_compressed",
    # the two tiny layers are [local, compressed] (the default alternation); on the 37-token inputs: local blocks of 8
    # (the last partial), 13 slots of c = 3 (the last partial), causal queries in blocks of 9 (b rounded up to a
    # multiple of c); random convolutions so the fast-path checks see no average-pooling symmetry across channels
    mechanism=dict(block_size=8, compression_factor=3, compression_init="random"),
    cpu_backends=("blocked",),
    gpu_backends=(),  # the blocked path (sdpa / cuBLAS) is also the GPU path: see attention/memory_compressed.py
    bad_values=dict(attention_layer_types=["local", "bogus"], block_size=0, compression_factor=0,
                    compression_init="bogus", identity_compression="yes"),
)
