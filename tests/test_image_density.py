"""benchmarks/image_data.py (the digits and photo-crop sets, their .npz cache) and benchmarks/image_density.py
(held-out bits/dim of image models: a CPU smoke run with the GPT-2 anchor, the metric, the refusals)."""

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import image_data  # noqa: E402
import image_density  # noqa: E402

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    image_data.main(["--write", str(folder), "--sets", "digits"])
    return folder


def test_digits_split_and_levels(cache):
    data = image_data.load("digits", cache)
    assert data.train_images.shape == (1500, 8, 8, 1) and data.test_images.shape == (297, 8, 8, 1)
    assert (data.num_levels, data.num_classes, data.tokens) == (17, 10, 64)
    digits = sklearn_datasets.load_digits()
    order = np.random.default_rng(image_data.DIGITS_SEED).permutation(len(digits.target))
    ids = data.processor()(data.test_images)["input_ids"]
    assert (ids[:, 0] == 17).all()  # the processor gives back sklearn's levels 0..16 exactly
    np.testing.assert_array_equal(ids[:, 1:].numpy(), digits.images[order[:297]].reshape(297, 64))
    np.testing.assert_array_equal(data.test_labels, digits.target[order[:297]])
    np.testing.assert_array_equal(data.train_labels, digits.target[order[297:]])


def test_crops_hold_out_a_region_never_trained_on():
    data = image_data.load("crops", crop_size=16)
    photos = sklearn_datasets.load_sample_images().images
    height, width = photos[0].shape[:2]
    per_photo = len(range(0, height - 15, 8)) * len(range(0, image_data.HELD_OUT_COLUMN - 15, 8))
    held_out = (height // 16) * ((width - image_data.HELD_OUT_COLUMN) // 16)
    assert data.train_images.shape == (2 * per_photo, 16, 16, 3) and len(data.test_images) == 2 * held_out
    assert (data.num_levels, data.num_classes) == (256, 0)
    np.testing.assert_array_equal(data.test_images[0], photos[0][:16, 480:496])
    np.testing.assert_array_equal(data.test_images[-1], photos[1][(height // 16 - 1) * 16:(height // 16) * 16, -16:])
    last_row = (height - 16) // 8 * 8
    np.testing.assert_array_equal(data.train_images[per_photo - 1], photos[0][last_row:last_row + 16, 464:480])


def test_cache_is_read_without_sklearn_and_checked(cache, monkeypatch, tmp_path):
    built = image_data.load("digits", cache)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # no scikit-learn: the cache must serve
    again = image_data.load("digits", cache)
    for part in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(again, part), getattr(built, part))
    with pytest.raises(ImportError, match="--write DIR"):
        image_data.load("digits", tmp_path)
    monkeypatch.setattr(image_data, "VERSION", image_data.VERSION + 1)
    with pytest.raises(ValueError, match="another version"):
        image_data.load("digits", cache)


def test_bits_per_dim_of_uniform_logits_is_log2_levels(cache):
    """Zero logits: every level equally likely, whatever the bos logit (it is left out of the softmax)."""
    data = image_data.load("digits", cache)
    config = AutoConfig.for_model("gpt2", vocab_size=18, n_positions=65, n_embd=8, n_layer=1, n_head=2)
    model = AutoModelForCausalLM.from_config(config)
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: the embeddings are zero too; logits are 0
    ids = data.processor()(data.test_images[:10])["input_ids"]
    bits = image_density.held_out_bits_per_dim(model, ids, None, 17, 4, torch.device("cpu"), torch.autocast("cpu",
                                               enabled=False))
    assert bits == pytest.approx(math.log2(17), rel=1e-6)


def test_smoke_run_writes_the_table_and_samples(cache, tmp_path):
    image_density.main(["--device", "cpu", "--data", "digits", "--cache", str(cache), "--models", "gpt2",
                        "--steps", "5", "--hidden", "16", "--layers", "2", "--heads", "2", "--batch", "4",
                        "--eval-batch", "128", "--samples", "4", "--out", str(tmp_path)])
    with open(tmp_path / "image_density_digits.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok" and row["steps"] == "5" and row["held_out_images"] == "297"
    assert 0 < float(row["held_out_bits_per_dim"]) < 2 * math.log2(17)
    assert "| gpt2 |" in (tmp_path / "image_density_digits.md").read_text()
    from PIL import Image

    grid = Image.open(tmp_path / row["sample_png"])  # 2 x 2 digits, 8 times enlarged, 1-pixel gaps
    assert grid.size == (2 * 64 + 3, 2 * 64 + 3)


@pytest.mark.parametrize("options, message", [
    (["--models", "gpt2", "--class-conditional"], "gpt2 has no class input"),
    (["--models", "gpt2", "--set", "gpt2.no_such_field=1"], "no config fields ['no_such_field']"),
    (["--models", "gpt2", "--set", "other.n_layer=1"], "MODEL.KEY=VALUE"),
    (["--models", "nonexistent"], "no model specs ['nonexistent']"),
    (["--models", "missing"], "model_type 'efficient_missing' is not installed"),
    (["--steps", "5", "--seconds", "2"], "not both"),
])
def test_bad_runs_are_refused(cache, options, message, monkeypatch, capsys):
    monkeypatch.setitem(image_density.SPECS, "missing", image_density.Spec("efficient_missing"))
    with pytest.raises(SystemExit) as stop:
        image_density.main(["--device", "cpu", "--data", "digits", "--cache", str(cache), *options])
    assert stop.value.code == 2 and message in capsys.readouterr().err
