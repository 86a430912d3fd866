"""The packaged evaluate metrics (hf_efficient.metrics): each against a hand computation on random inputs, through
`compute` and `add_batch`; loading without any network; perplexity from a model's logits, directly and in Trainer."""

import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from testers import TESTERS
from transformers import Trainer, TrainingArguments

import hf_efficient
from hf_efficient import metrics
from hf_efficient.auto import VARIANTS

ROOT = Path(hf_efficient.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def loaded():
    return {name: metrics.load(name) for name in metrics.METRICS}


def random_labels(seed: int, count: int, classes: int) -> tuple[list[int], list[int], list[float]]:
    rng = random.Random(seed)
    return ([rng.randrange(classes) for _ in range(count)], [rng.randrange(classes) for _ in range(count)],
            [rng.uniform(0.1, 2.0) for _ in range(count)])


def hand_f1(predictions, references, label, weights) -> tuple[float, float, float]:
    """(tp, fp, fn) of one class, by counting."""
    tp = fp = fn = 0.0
    for p, r, w in zip(predictions, references, weights, strict=True):
        tp += w * (p == label and r == label)
        fp += w * (p == label and r != label)
        fn += w * (p != label and r == label)
    return tp, fp, fn


def f1_of(tp, fp, fn) -> float:
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0


@pytest.mark.parametrize("seed", range(3))
def test_accuracy_matches_counting(loaded, seed):
    predictions, references, weights = random_labels(seed, 50, 4)
    correct = sum(p == r for p, r in zip(predictions, references, strict=True))
    accuracy = loaded["accuracy"]
    assert accuracy.compute(predictions=predictions, references=references) == {"accuracy": correct / 50}
    assert accuracy.compute(predictions=predictions, references=references, normalize=False)["accuracy"] == correct
    weighted = sum(w for p, r, w in zip(predictions, references, weights, strict=True) if p == r) / sum(weights)
    result = accuracy.compute(predictions=predictions, references=references, sample_weight=weights)
    assert result["accuracy"] == pytest.approx(weighted, rel=1e-12)
    for start in range(0, 50, 16):  # batches of unequal size, as an evaluation loop adds them
        accuracy.add_batch(predictions=predictions[start:start + 16], references=references[start:start + 16])
    assert accuracy.compute() == {"accuracy": correct / 50}


@pytest.mark.parametrize("seed", range(3))
def test_f1_matches_hand_computation_for_every_average(loaded, seed):
    f1 = loaded["f1"]
    predictions, references, weights = random_labels(seed, 60, 4)
    classes = sorted(set(predictions) | set(references))
    for sample_weight in (None, weights):
        w = sample_weight or [1.0] * 60
        counts = {c: hand_f1(predictions, references, c, w) for c in classes}
        per_class = [f1_of(*counts[c]) for c in classes]
        support = [counts[c][0] + counts[c][2] for c in classes]
        expected = {
            "macro": sum(per_class) / len(classes),
            "micro": f1_of(*(sum(counts[c][i] for c in classes) for i in range(3))),
            "weighted": sum(f * s for f, s in zip(per_class, support, strict=True)) / sum(support),
        }
        for average, value in expected.items():
            result = f1.compute(predictions=predictions, references=references, average=average,
                                sample_weight=sample_weight)
            assert result["f1"] == pytest.approx(value, rel=1e-12), (average, sample_weight is None)
        result = f1.compute(predictions=predictions, references=references, average=None, sample_weight=sample_weight)
        assert result["f1"] == pytest.approx(per_class, rel=1e-12)
    # micro F1 over every class that occurs is accuracy
    accuracy = loaded["accuracy"].compute(predictions=predictions, references=references)["accuracy"]
    assert f1.compute(predictions=predictions, references=references, average="micro")["f1"] == pytest.approx(accuracy)
    # a subset of the classes, one of which never occurs (F1 0, as scikit-learn)
    subset = f1.compute(predictions=predictions, references=references, average="macro", labels=[1, 3, 9])["f1"]
    unweighted = [f1_of(*hand_f1(predictions, references, c, [1.0] * 60)) for c in (1, 3)]
    assert subset == pytest.approx((unweighted[0] + unweighted[1] + 0.0) / 3, rel=1e-12)

    binary_predictions, binary_references = [p % 2 for p in predictions], [r % 2 for r in references]
    for pos_label in (1, 0):
        value = f1_of(*hand_f1(binary_predictions, binary_references, pos_label, [1.0] * 60))
        result = f1.compute(predictions=binary_predictions, references=binary_references, pos_label=pos_label)
        assert result["f1"] == pytest.approx(value, rel=1e-12)
    for start in range(0, 60, 25):
        f1.add_batch(predictions=binary_predictions[start:start + 25], references=binary_references[start:start + 25])
    assert f1.compute()["f1"] == pytest.approx(f1_of(*hand_f1(binary_predictions, binary_references, 1, [1.0] * 60)))


def test_f1_refuses_settings_that_do_not_fit(loaded):
    f1 = loaded["f1"]
    for name in ("accuracy", "f1"):  # nothing to score is an error, not a score of 0
        with pytest.raises(ValueError, match="No examples to score"):
            loaded[name].compute(predictions=[], references=[])
    with pytest.raises(ValueError, match="average='binary' needs at most two classes"):
        f1.compute(predictions=[0, 1, 2], references=[0, 1, 1])
    with pytest.raises(ValueError, match="pos_label=5 is not one of the classes"):
        f1.compute(predictions=[0, 1], references=[1, 0], pos_label=5)
    with pytest.raises(ValueError, match="labels is used only when average is not 'binary'"):
        f1.compute(predictions=[0, 1], references=[1, 0], labels=[0, 1])
    with pytest.raises(ValueError, match="pos_label is used only with average='binary'"):
        f1.compute(predictions=[0, 1], references=[1, 0], average="macro", pos_label=0)
    with pytest.raises(ValueError, match="'samples' needs multilabel"):
        f1.compute(predictions=[0, 1], references=[1, 0], average="samples")
    with pytest.raises(ValueError, match="one configuration, 'default'"):
        metrics.load("f1", config_name="multilabel")
    with pytest.raises(ValueError, match="No packaged metric 'bleu'"):
        metrics.load("bleu")


def random_lm_batch(seed: int, batch: int = 3, length: int = 11, vocab: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits, and labels with -100 at random positions and as right padding."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[torch.rand(batch, length, generator=generator) < 0.2] = -100
    labels[1, length - 4:] = -100
    return logits, labels


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_perplexity_is_exp_of_the_mean_nll_of_the_logits(loaded, causal, seed):
    logits, labels = random_lm_batch(seed)
    log_likelihoods = metrics.token_log_likelihoods(logits, labels, causal=causal)
    if causal:  # transformers' shift: position t predicts label t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1),
                                            ignore_index=-100)
    perplexity = loaded["perplexity"]
    result = perplexity.compute(predictions=log_likelihoods.numpy(), references=labels.numpy())
    assert result["tokens"] == int((labels != -100).sum())
    assert result["nll"] == pytest.approx(nll.item(), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-6)
    for row in range(len(labels)):  # one text at a time, rows of their own length (the -100 tail cut off)
        keep = len(labels[row]) - 4 if row == 1 else len(labels[row])
        perplexity.add_batch(predictions=[log_likelihoods[row, :keep].tolist()],
                             references=[labels[row, :keep].tolist()])
    assert perplexity.compute()["perplexity"] == pytest.approx(result["perplexity"], rel=1e-9)


def test_perplexity_refuses_inputs_it_cannot_score(loaded):
    perplexity = loaded["perplexity"]
    with pytest.raises(ValueError, match="not losses"):
        perplexity.compute(predictions=[[1.5, 2.0]], references=[[3, 4]])
    with pytest.raises(ValueError, match=r"2 log-likelihoods but 3 labels.*labels\[:, 1:\]"):
        perplexity.compute(predictions=[[-1.0, -2.0]], references=[[3, 4, 5]])
    with pytest.raises(ValueError, match="every reference label is -100"):
        perplexity.compute(predictions=[[-1.0, -2.0]], references=[[-100, -100]])
    nan = perplexity.compute(predictions=[[-1.0, float("nan")]], references=[[3, 4]])
    assert math.isnan(nan["perplexity"])  # a broken model's NaN shows, never skipped
    with pytest.raises(ValueError, match="disagree on"):
        metrics.token_log_likelihoods(torch.zeros(2, 5, 7), torch.zeros(2, 6, dtype=torch.long), causal=True)


def test_perplexity_in_trainer_equals_exp_of_its_eval_loss(tmp_path):
    """Trainer's evaluation loop: token_log_likelihoods as preprocess_logits_for_metrics, the packaged perplexity in
    compute_metrics. Rows of one length in full batches, so Trainer's eval_loss (a mean of batch means) is the same
    token mean the metric takes."""
    config = TESTERS["efficient_linear_transformer"].config("llama")
    torch.manual_seed(0)
    model = VARIANTS["efficient_linear_transformer"].heads["causal_lm"](config)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, config.vocab_size, (8, 20), generator=generator).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    perplexity = metrics.load("perplexity")
    trainer = Trainer(
        model=model, eval_dataset=data,
        args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=4,
                               disable_tqdm=True),
        preprocess_logits_for_metrics=functools.partial(metrics.token_log_likelihoods, causal=True),
        compute_metrics=lambda p: perplexity.compute(predictions=p.predictions, references=p.label_ids[:, 1:]),
    )
    result = trainer.evaluate()
    assert result["eval_tokens"] == 8 * 19
    assert result["eval_nll"] == pytest.approx(result["eval_loss"], rel=1e-5)
    assert result["eval_perplexity"] == pytest.approx(math.exp(result["eval_loss"]), rel=1e-5)


OFFLINE_SCRIPT = textwrap.dedent("""
    import json, socket, sys

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse

    import evaluate
    from hf_efficient import metrics

    results = {
        "accuracy": metrics.load("accuracy").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]),
        "f1": metrics.load("f1").compute(predictions=[0, 2, 1, 0], references=[0, 1, 2, 0], average="macro"),
        "perplexity": metrics.load("perplexity").compute(predictions=[[-1.0, -2.0]], references=[[3, 4]]),
    }
    try:  # the control: a Hub metric can't load here
        evaluate.load("accuracy")
        results["hub"] = "loaded"
    except Exception as error:
        results["hub"] = type(error).__name__
    json.dump(results, sys.stdout)
""")


def test_metrics_load_without_network(tmp_path):
    """A fresh interpreter with the Hub switched off, every socket refused and empty caches: the packaged metrics
    load (evaluate copies each module into its modules cache and imports it from there) and compute."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"),
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout)
    assert results["accuracy"] == {"accuracy": 0.75}
    assert results["f1"]["f1"] == pytest.approx(1 / 3)
    assert results["perplexity"]["perplexity"] == pytest.approx(math.exp(1.5))
    assert results["hub"] != "loaded"
    copied = {path.name for path in (tmp_path / "modules").rglob("*.py")}
    assert {"accuracy.py", "f1.py", "perplexity.py"} <= copied


def test_wheel_ships_the_metric_modules(tmp_path):
    """`evaluate.load` reads the module files from the installed package: the wheel must carry them."""
    pytest.importorskip("setuptools", reason="the wheel is built with the installed setuptools (no build isolation)")
    source = tmp_path / "source"
    shutil.copytree(ROOT / "hf_efficient", source / "hf_efficient", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in metrics.METRICS:
        assert f"hf_efficient/metrics/{name}/{name}.py" in shipped
