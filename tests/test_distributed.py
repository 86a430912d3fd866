"""Data-parallel training on two CPU processes (torch.distributed, gloo), as `torchrun --nproc_per_node 2` runs it:
random state (features, blocks, tables, rotations) the same on every rank even when the ranks' global generators
differ; `Trainer` under DDP equal to one process at the same global batch, padded batches of varying length, for
variants that carry state through training; its checkpoint (written by rank 0) reloading in one process; FSDP over
EfficientBlock. The routing centroids' all-reduce is tested in tests/test_routing.py."""

import json
import os
import random

import pytest
import torch
from ranks import run_ranks
from testers import TESTERS
from transformers import Trainer, TrainingArguments

from hf_efficient import VARIANTS
from hf_efficient.core.layers import EfficientBlock

# the variants trained under DDP, with the state each carries through training
TRAINED = {
    "efficient_longformer": {},  # none: the sliding window alone
    "efficient_performer": {},  # seeded random-feature buffers
    "efficient_reformer": {"resample_rotations": True},  # fresh hash rotations every training forward
    "efficient_bigbird": {"resample_random_blocks_in_training": True},  # fresh random blocks every training forward
}
STEPS, PER_RANK, WORLD = 3, 2, 2


def classifier(model_type: str):
    torch.manual_seed(0)  # the same weights in every process
    config = TESTERS[model_type].config(num_labels=2, **TRAINED.get(model_type, {}))
    return VARIANTS[model_type].heads["sequence_classification"](config)


def rows() -> list[dict]:
    """STEPS * PER_RANK * WORLD rows of 12 to 60 tokens (ids never the pad id 0) with random labels."""
    rng = random.Random(0)
    lengths = [rng.randint(12, 60) for _ in range(STEPS * PER_RANK * WORLD)]
    return [{"input_ids": [rng.randint(1, 96) for _ in range(n)], "labels": rng.randint(0, 1)} for n in lengths]


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad to the batch's longest row."""
    longest = max(len(f["input_ids"]) for f in features)
    return {"input_ids": torch.tensor([f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"]))
                                            for f in features]),
            "labels": torch.tensor([f["labels"] for f in features])}


class InOrder(Trainer):
    """Rows in order: a step's batches of rank 0 and rank 1 (batches 2k and 2k+1 of PER_RANK rows) are together one
    process's batch k of WORLD * PER_RANK rows."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def train(model_type: str, out, batch_size: int):
    """STEPS steps of `Trainer` (DDP when run in a gloo group) -> (model, per-step losses, trainer). SGD, not AdamW:
    Adam turns the float noise of gradients that are zero in exact arithmetic (the key bias, under softmax) into
    full-size steps, which no two summation orders share."""
    model = classifier(model_type)
    arguments = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=STEPS,
                                  optim="sgd", learning_rate=0.5, logging_steps=1, save_strategy="no", report_to=[],
                                  seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = InOrder(model=model, args=arguments, train_dataset=rows(), data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model, losses, trainer


def random_state(rank: int) -> dict:
    """What each rank draws after its global generator was seeded apart (as dropout on batches of other shapes, or
    per-rank seeds, leave them): redraws and training-time draws must still agree."""
    performer = classifier("efficient_performer").base_model
    bigbird = classifier("efficient_bigbird").base_model.train()
    reformer = classifier("efficient_reformer").base_model.train()
    torch.manual_seed(0)
    synthesizer = VARIANTS["efficient_synthesizer"].model(TESTERS["efficient_synthesizer"].config())
    torch.manual_seed(1000 + rank)  # from here on the ranks' global generators differ
    state = {"global_draw": torch.randint(0, 2**31, (1,))}  # (checked: the test is not vacuous)
    state["features"] = [layer.self_attn.random_features.clone() for layer in performer.layers]
    performer.redraw_features()
    state["redrawn_features"] = [layer.self_attn.random_features.clone() for layer in performer.layers]
    state["feature_seed"] = performer.config.feature_seed
    inputs = TESTERS["efficient_bigbird"].inputs(bigbird.config, seed=1)
    state["bigbird_training_output"] = bigbird(**inputs).last_hidden_state.detach()
    state["bigbird_seed"] = bigbird.resample_random_blocks()
    inputs = TESTERS["efficient_reformer"].inputs(reformer.config, seed=1)
    state["reformer_training_outputs"] = [reformer(**inputs).last_hidden_state.detach() for _ in range(2)]
    state["synthesizer_seed"] = synthesizer.redraw_random_synthesizers()
    state["synthesizer_tables"] = {name: tensor.clone() for name, tensor in synthesizer.state_dict().items()}
    return state


def ddp_worker(rank: int, world: int, out: str) -> None:
    torch.save(random_state(rank), f"{out}/random_state{rank}.pt")
    for model_type in TRAINED:
        model, losses, trainer = train(model_type, f"{out}/{model_type}", PER_RANK)
        trainer.save_model(f"{out}/{model_type}")  # rank 0 writes
        torch.save({"losses": losses, "state": model.state_dict()}, f"{out}/{model_type}{rank}.pt")
    fsdp_worker(rank, world, out)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One two-process run (each start costs seconds of imports) of the random-state draws, the DDP fine-tunes and
    the FSDP steps: its outputs' folder."""
    out = tmp_path_factory.mktemp("ddp")
    run_ranks(ddp_worker, str(out), world=WORLD)
    return out


def assert_same(first, second, path="") -> None:
    if isinstance(first, dict):
        assert first.keys() == second.keys(), path
        for key in first:
            assert_same(first[key], second[key], f"{path}.{key}")
    elif isinstance(first, list):
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(first, torch.Tensor):
        assert torch.equal(first, second), f"{path} differs between the ranks"
    else:
        assert first == second, f"{path}: {first} vs {second}"


def test_random_state_is_the_same_on_every_rank(ddp_run):
    """Seeded buffers, redraws (Performer features, BigBird's seed, Synthesizer tables), BigBird's and Reformer's
    draws in training: equal on both ranks although their global generators differ."""
    ranks = [torch.load(ddp_run / f"random_state{rank}.pt") for rank in range(WORLD)]
    assert not torch.equal(ranks[0].pop("global_draw"), ranks[1].pop("global_draw"))
    assert_same(ranks[0], ranks[1])
    first, second = ranks[0]["reformer_training_outputs"]
    assert not torch.equal(first, second), "Reformer draws fresh rotations in every training forward"


@pytest.mark.parametrize("model_type", list(TRAINED))
def test_ddp_trainer_equals_one_process_and_its_checkpoint_reloads(ddp_run, tmp_path, model_type):
    """Two ranks of PER_RANK rows per step = one process of WORLD * PER_RANK rows: the same losses (the mean of the
    ranks') and weights (and the ranks' weights equal); the checkpoint rank 0 saved reloads with the same outputs."""
    ranks = [torch.load(ddp_run / f"{model_type}{rank}.pt") for rank in range(WORLD)]
    alone, losses, _ = train(model_type, tmp_path, WORLD * PER_RANK)
    assert len(losses) == STEPS
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(losses), rtol=1e-5, atol=0)
    start = classifier(model_type).state_dict()
    moved = max((alone.state_dict()[name] - tensor).abs().max() for name, tensor in start.items())
    assert moved > 1e-3, "the steps moved the weights"
    for name, tensor in alone.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(ranks[1]["state"][name], ranks[0]["state"][name]), f"{name} differs between the ranks"

    reloaded = type(alone).from_pretrained(ddp_run / model_type).eval()
    inputs = TESTERS[model_type].inputs(alone.config, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, alone.eval()(**inputs).logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ FSDP (fully_shard, FSDP2)


def fsdp_steps(model, batches: list[list[dict]]) -> list[float]:
    """One SGD step per batch -> the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for batch in batches:
        loss = model(**collate(batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def fsdp_worker(rank: int, world: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = classifier("efficient_longformer")
    mesh = init_device_mesh("cpu", (world,))
    for module in model.modules():
        if isinstance(module, EfficientBlock):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    data, size = rows(), WORLD * PER_RANK
    losses = fsdp_steps(model, [data[step * size + rank * PER_RANK:][:PER_RANK] for step in range(STEPS)])
    sharded = {name: tuple(p.to_local().shape) for name, p in model.named_parameters() if isinstance(p, DTensor)}
    state = {name: t.full_tensor() if isinstance(t, DTensor) else t for name, t in model.state_dict().items()}
    torch.save({"losses": losses, "state": state, "sharded": sharded}, f"{out}/fsdp{rank}.pt")


def test_fsdp_over_efficient_blocks_equals_one_process(ddp_run):
    """fully_shard on every EfficientBlock and the model: parameters really sharded across the two ranks, and the
    steps give the losses (the mean of the ranks') and weights of one process over the whole batch."""
    ranks = [torch.load(ddp_run / f"fsdp{rank}.pt") for rank in range(WORLD)]
    alone = classifier("efficient_longformer")
    data, size = rows(), WORLD * PER_RANK
    losses = fsdp_steps(alone, [data[step * size:][:size] for step in range(STEPS)])
    mean = [sum(rank["losses"][step] for rank in ranks) / WORLD for step in range(STEPS)]
    torch.testing.assert_close(torch.tensor(mean), torch.tensor(losses), rtol=1e-5, atol=0)
    full = dict(alone.named_parameters())
    assert ranks[0]["sharded"].keys() == full.keys()
    block = "model.layers.0.self_attn.q_proj.weight"
    assert ranks[0]["sharded"][block][0] == full[block].shape[0] // WORLD
    for name, tensor in alone.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------- examples/finetune_classification.py on 2 ranks


def example_worker(rank: int, world: int, model: str, out: str, records: str) -> None:
    """The example's main as `torchrun --nproc_per_node 2` runs it, counting the save_pretrained calls of the rank."""
    from peft import PeftModel
    from test_finetune_example import TINY_ARGS, load_example
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    os.environ.pop("ACCELERATE_USE_CPU", None)  # the plain torchrun command: the example itself must join the ranks
    writes, trained = [], {}
    train = Trainer.train

    def recording_train(self, *args, **kwargs):
        output = train(self, *args, **kwargs)
        trained.update(world_size=self.args.world_size, steps=self.state.global_step)
        return output
    Trainer.train = recording_train
    for owner in (PreTrainedModel, PreTrainedTokenizerBase, PeftModel):
        def recording(self, *args, _save=owner.save_pretrained, **kwargs):
            writes.append(type(self).__name__)
            return _save(self, *args, **kwargs)
        owner.save_pretrained = recording
    results = load_example().main(["--model", model, "--out", out, *TINY_ARGS])
    torch.save({"results": results, "writes": writes, "trained": trained}, f"{records}/example{rank}.pt")


def test_example_refuses_processes_that_would_train_alone(monkeypatch):
    """Launched as 2 processes while Trainer runs on 1 (e.g. CPU processes it was not told to join): an error that
    says how to launch, not two lone trainings."""
    from types import SimpleNamespace

    from test_finetune_example import load_example

    example = load_example()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="each would train alone. Launch with `accelerate launch`"):
        example.refuse_lone_processes(SimpleNamespace(world_size=1))
    example.refuse_lone_processes(SimpleNamespace(world_size=2))
    monkeypatch.setenv("WORLD_SIZE", "1")
    example.refuse_lone_processes(SimpleNamespace(world_size=1))


def test_example_runs_on_two_processes_and_only_rank_zero_writes(tmp_path):
    """Both ranks report the same held-out metrics (of all 9 articles); rank 0 alone writes the adapter, the merged
    model and the metrics, and the merged model scores what they say."""
    import test_finetune_example

    model = test_finetune_example.convert_tiny(tmp_path, "bert", "longformer")
    (tmp_path / "records").mkdir()
    run_ranks(example_worker, str(model), str(tmp_path / "run"), str(tmp_path / "records"), world=WORLD)
    ranks = [torch.load(tmp_path / "records" / f"example{rank}.pt") for rank in range(WORLD)]
    metrics = [{name: rank["results"][name] for name in ("eval_loss", "eval_accuracy", "eval_f1")} for rank in ranks]
    assert metrics[0] == metrics[1]
    assert [rank["trained"]["world_size"] for rank in ranks] == [WORLD] * WORLD  # one DDP run, not two lone ones
    assert ranks[0]["writes"] and not ranks[1]["writes"], ranks[1]["writes"]
    out = tmp_path / "run"
    assert (out / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == ranks[0]["results"]["eval_accuracy"]
    test_finetune_example.assert_merged_model_scores_the_results(out, ranks[0]["results"])
