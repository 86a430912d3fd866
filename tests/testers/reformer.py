from .base import VariantTester

TESTER = VariantTester(
    "efficient_reformer",
    # the two tiny layers are [local, lsh] (the default alternation); on the 37-token inputs: local chunks of 8 (the
    # last partial), LSH chunks of 8 over 4 buckets and 2 hash rounds, so chunks mix buckets and the rounds disagree
    # resample_rotations=False: the suite compares training-mode passes, which must hash alike (resampling in
    # training is tested in tests/test_reformer.py)
    mechanism=dict(local_attn_chunk_length=8, lsh_attn_chunk_length=8, num_buckets=4, num_hashes=2,
                   resample_rotations=False),
    cpu_backends=("blocked",),
    gpu_backends=(),
    # LSH layers share one query-key projection: no setting of them is full attention with separate W_q, W_k (an
    # all-local model with chunks covering the input is exact: tests/test_reformer.py)
    degenerate_tolerance=None,
    bad_values=dict(attn_layers=["local", "bogus"], lsh_attn_chunk_length=0, local_attn_chunk_length=0,
                    lsh_num_chunks_before=-1, lsh_num_chunks_after=-1, local_num_chunks_before=-1,
                    local_num_chunks_after=-1, num_hashes=0, num_buckets=3, hash_seed=-1, resample_rotations="yes",
                    reversible="yes", reversible_backward="yes", chunk_size_feed_forward=-1),
)
