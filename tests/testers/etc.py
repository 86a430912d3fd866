from .base import VariantTester

TESTER = VariantTester(
    "efficient_etc",
    # a radius of 4 and distances clipped at 3: far below the 37-token inputs
    mechanism=dict(local_radius=4, relative_position_max_distance=3, relative_vocab_size=11),
    cpu_backends=("blocked",),
    gpu_backends=("flex",),
    bad_values=dict(local_radius=0, relative_position_max_distance=-1, relative_vocab_size=10,
                    use_hard_g2l_mask="yes", use_hard_l2g_mask=1),
)
