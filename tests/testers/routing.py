from .base import VariantTester

TESTER = VariantTester(
    "efficient_routing",
    # on the 37-token inputs: 2 local heads reaching 5 positions, 2 routing heads with 3 centroids and clusters of 8
    # (bidirectional: 24 of 37 slots, so some tokens are in no cluster and some in two). centroid_decay=1.0 keeps the
    # centroids fixed: the common suite runs training passes back to back (fast path vs reference, with and without
    # gradient checkpointing) and compares them, which a k-means step between them would change; the k-means step has
    # its own tests (tests/test_routing.py), checkpointing and backends included
    mechanism=dict(num_routing_heads=2, local_window=5, num_clusters=3, routing_window=8, centroid_decay=1.0),
    cpu_backends=("blocked",),
    gpu_backends=("flex",),
    bad_values=dict(num_routing_heads=5, local_window=0, num_clusters=0, routing_window=0, centroid_decay=0.0,
                    centroid_seed=-1),
)
