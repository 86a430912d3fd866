from dataclasses import dataclass

from .transformer_xl import TransformerXLTester


@dataclass
class CompressiveTester(TransformerXLTester):
    pass


TESTER = CompressiveTester(
    "efficient_compressive",
    # a memory covering the common suite's streams (37 tokens, then 12 generated): cached decoding equals a full pass
    # only while nothing is compressed. Compression itself (memories of 4-8 states) is tested in
    # tests/test_compressive.py; the compression network, reached only by the reconstruction loss of states leaving
    # the memory, gets no gradient in one memoryless pass (trained_only_with_memory). same_length (the window that
    # makes Transformer-XL's tester sparse in one pass) would hide the compressed memory, so the config refuses it.
    mechanism=dict(mem_len=64, cmem_len=8, compression_rate=2, clamp_len=10),
    cpu_backends=("blocked",),
    trained_only_with_memory=(".compression.",),
    # Transformer-XL's conversion (relative terms zero) with no window: one pass is the source until memories fill
    as_converted_equals_source=True,
    bad_values=dict(mem_len=-1, clamp_len=0, same_length="yes", relative_attention="yes", embedding_multiplier=0.0,
                    adaptive_cutoffs=[5, 3], adaptive_div_val=0, adaptive_tie_projections=[True], cmem_len=-1,
                    compression_rate=0, compression="dilated", reconstruction_loss_weight=-1.0),
)
