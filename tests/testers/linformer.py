from .base import VariantTester

TESTER = VariantTester(
    "efficient_linformer",
    # k = 8 rows for the 37-token inputs (n = 128); layerwise: the one projection shared by both layers (the other
    # sharing modes are covered in tests/test_linformer.py); random E so the fast-path checks see no zero pattern
    mechanism=dict(projected_length=8, projection_sharing="layerwise", projection_init="random"),
    cpu_backends=("blocked",),
    gpu_backends=(),  # the blocked path is plain matmuls and is also the GPU path
    bad_values=dict(projected_length=0, projection_sharing="bogus", projection_init="bogus", identity_projection="yes"),
)
