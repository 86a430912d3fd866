"""`hf-efficient bench`: runs the harness's flows from a source checkout, writes the PNG plots of a train-step CSV,
and says what to do where no checkout is found."""

import csv
import struct

import pytest

from hf_efficient import cli

FIELDS = ["model", "label", "length", "status", "tokens_per_s", "peak_gib", "device_name", "torch", "dtype"]


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_bench_plot_writes_both_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"model": name, "label": name, "length": n, "status": status, "tokens_per_s": speed, "peak_gib": gib,
             "device_name": "GPU", "torch": "2", "dtype": "bfloat16"}
            for name, points in {"dense": [(1024, "ok", 5e4, 1.0), (4096, "ok", 2e4, 9.0), (16384, "oom", "", "")],
                                 "ours": [(1024, "ok", 4e4, 0.5), (4096, "ok", 6e4, 1.5), (16384, "ok", 7e4, 5.0)]
                                 }.items() for n, status, speed, gib in points]
    write_csv(tmp_path / "run.csv", rows)
    assert cli.main(["bench", "plot", str(tmp_path / "run.csv"), "--out", str(tmp_path / "plots")]) == 0
    for suffix in ("tokens_per_s", "peak_memory"):
        width, height = png_size(tmp_path / "plots" / f"run_{suffix}.png")
        assert width > 400 and height > 300


def test_bench_plot_refuses_a_csv_of_another_kind(tmp_path, capsys):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert cli.main(["bench", "plot", str(tmp_path / "other.csv")]) == 2
    assert "not a CSV of benchmarks/train_step.py" in capsys.readouterr().err


def test_bench_runs_a_flow_with_its_own_options(capsys):
    assert cli.main(["bench", "train-step", "--help"]) == 0
    assert "--lengths" in capsys.readouterr().out


def test_bench_without_a_checkout_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(cli, "benchmarks_folder", lambda: None)
    assert cli.main(["bench", "train-step"]) == 2
    assert "source checkout" in capsys.readouterr().err
