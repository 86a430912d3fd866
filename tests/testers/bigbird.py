from .base import VariantTester

TESTER = VariantTester(
    "efficient_bigbird",
    # blocks of 4 with 3 sliding + 1 random + 2 global: rows of 8+ blocks (29+ tokens) are sparse, so the 37- and
    # 30-token rows are sparse and the 12-token row takes the full-attention fallback
    mechanism=dict(block_size=4, num_random_blocks=1),
    cpu_backends=("blocked",),
    gpu_backends=("flex",),
    bad_values=dict(block_size=0, num_sliding_blocks=2, num_random_blocks=-1, num_global_blocks=-1, seed="x",
                    resample_random_blocks_in_training="yes"),
)
