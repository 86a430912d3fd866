"""Training segment-recurrent models (Transformer-XL) with `Trainer`: in-order segments of parallel streams, and the
memory carried from one step to the next.

transformers 5 dropped `TrainingArguments.past_index`, the old way of feeding memories back. Here the data are
`SegmentStreams` (a token stream split into B contiguous streams, cut into segments; item k is segment k // B of
stream k % B) and `SegmentRecurrentTrainer` reads them in order (no shuffling), B items per batch, so row b of each
batch continues row b of the batch before. The trainer passes the memory the model returned with the previous batch
(`cache=`, detached by the model) to the next one, in training and, separately, in evaluation; it starts empty at
each epoch and each evaluation.
"""

import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainerCallback

from .core.cache_argument import returned_cache


class SegmentStreams(Dataset):
    """`token_ids` (a 1-D sequence) as `num_streams` contiguous streams of `segment_length`-token segments, ordered
    segment-major: batches of `num_streams` items read in order hold consecutive segments of the same streams. The
    tail that doesn't fill a segment in every stream is dropped. Items: input_ids and labels (the same tokens; the
    causal-LM head shifts them, so the first token of a segment is not a target of the previous one)."""

    def __init__(self, token_ids, num_streams: int, segment_length: int):
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if num_streams < 1 or segment_length < 1:
            raise ValueError("num_streams and segment_length must be positive.")
        self.num_streams, self.segment_length = num_streams, segment_length
        self.num_segments = ids.numel() // num_streams // segment_length
        if self.num_segments < 1:
            raise ValueError(f"{ids.numel()} tokens don't fill one segment of {segment_length} in each of "
                             f"{num_streams} streams; use fewer streams or shorter segments.")
        self.streams = ids[: num_streams * self.num_segments * segment_length].view(num_streams, -1)

    def __len__(self) -> int:
        return self.num_streams * self.num_segments

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        segment, stream = divmod(index, self.num_streams)
        tokens = self.streams[stream, segment * self.segment_length:(segment + 1) * self.segment_length]
        return {"input_ids": tokens, "labels": tokens.clone()}


class _ForgetAtEpochStart(TrainerCallback):
    def __init__(self, trainer: "SegmentRecurrentTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.reset_memories()


class SegmentRecurrentTrainer(Trainer):
    """A `Trainer` that reads the training data in order and carries the model's memory (the `cache` it returns)
    from each batch to the next. With `SegmentStreams` data, per_device_train_batch_size must equal its
    num_streams. Single process only (one set of streams); several processes raise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise ValueError("SegmentRecurrentTrainer carries one memory per stream in one process; distributed "
                             "training would split the streams across ranks. Train on one process.")
        self.check_streams(self.train_dataset, "train")
        self.check_streams(self.eval_dataset, "eval")
        self.memories = {True: None, False: None}  # by model.training
        self.add_callback(_ForgetAtEpochStart(self))

    def check_streams(self, dataset, name: str) -> None:
        """SegmentStreams data must come num_streams items to a batch (row b of every batch: stream b)."""
        size = getattr(self.args, f"per_device_{name}_batch_size")
        streams = getattr(dataset, "num_streams", None)
        if streams is not None and streams != size:
            raise ValueError(f"The {name} data has {streams} streams but per_device_{name}_batch_size={size}; "
                             "make them equal, so that each batch row continues the same stream.")

    def reset_memories(self) -> None:
        self.memories = {True: None, False: None}

    def _get_train_sampler(self, *args, **kwargs) -> SequentialSampler:
        dataset = args[0] if args and args[0] is not None else kwargs.get("train_dataset") or self.train_dataset
        return SequentialSampler(dataset)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        mode = model.training
        inputs = {**inputs, "cache": self.memories[mode], "use_cache": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.memories[mode] = returned_cache(outputs)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, *args, **kwargs):
        self.check_streams(eval_dataset if eval_dataset is not None else self.eval_dataset, "eval")
        self.memories[False] = None
        try:
            return super().evaluate(eval_dataset, *args, **kwargs)
        finally:
            self.memories[False] = None
