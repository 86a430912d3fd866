from .base import VariantTester

TESTER = VariantTester(
    "efficient_longformer",
    mechanism=dict(attention_window=[4, 6], attention_dilation=[1, 2]),  # windows far below the 37-token inputs
    cpu_backends=("blocked",),
    gpu_backends=("flex",),
    bad_values=dict(attention_window=5, attention_dilation=0, global_first_token="yes"),
)
