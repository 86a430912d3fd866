from .base import VariantTester

TESTER = VariantTester(
    "efficient_sinkhorn",
    # blocks of 8 on the 37-token inputs: 5 blocks (the last partial), each query sees its block and one sorted block.
    # No Gumbel noise here: the common suite compares separate training-mode calls (backends, checkpointing), which
    # would draw different noise; tests/test_sinkhorn.py covers the noise under fixed seeds.
    mechanism=dict(block_size=8, gumbel_noise=False),
    cpu_backends=("blocked",),
    gpu_backends=(),  # the blocked path (gathered blocks through sdpa) is also the GPU path
    bad_values=dict(block_size=0, max_num_blocks=0, sinkhorn_iterations=0, sinkhorn_temperature=0.0,
                    gumbel_noise="yes", sort_hidden_size=0, sortcut_blocks=0),
)
