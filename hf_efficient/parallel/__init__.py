"""Training across several processes beyond data parallelism: a sequence split across the ranks of a group."""

from .sequence import sequence_parallel, shard_batch, sum_gradients, whole_loss

__all__ = ["sequence_parallel", "shard_batch", "sum_gradients", "whole_loss"]
