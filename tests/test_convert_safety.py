"""`convert` loses nothing and reads nothing it shouldn't: the old output survives a failure or a kill, the source is
never written to, links and module paths never lead out of it, pickles are never loaded, and every refusal comes as
one `error:` line (exit code 2) before any work is done."""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from test_conversion import save_tiny_bert, save_tiny_llama
from testers import TESTERS
from transformers import AutoModel

import hf_efficient
from hf_efficient.cli import main
from hf_efficient.conversion import ConversionError, convert

convert_module = importlib.import_module("hf_efficient.conversion.convert")
ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")  # a tqdm bar: "...|  3/4 [00:01<..."
FAST = dict(max_length=128, check=False, attention_window=8)  # no fidelity check: speed


def save_sentence_transformers_source(folder: Path) -> Path:
    """A tiny BERT saved as a sentence-transformers folder (modules.json, a pooling module)."""
    save_tiny_bert(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links as links) -> its bytes."""
    return {str(path.relative_to(folder)): (os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
            for path in sorted(folder.rglob("*")) if path.is_symlink() or path.is_file()}


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a conversion gets as far as loading the source's weights."""
    def load_source(*args, **kwargs):
        raise AssertionError("the source was loaded: the refusal came after work started")

    monkeypatch.setattr(convert_module, "load_source", load_source)


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code (returned or raised) and the stderr lines of `hf-efficient ARGV` other than progress bars."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    lines = capsys.readouterr().err.splitlines()
    return code, [line for line in lines if line.strip() and not PROGRESS.search(line)]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return save_sentence_transformers_source(tmp_path_factory.mktemp("source") / "bert")


@pytest.fixture
def old_output(source, tmp_path) -> Path:
    """A converted folder holding a file of the user's, to be replaced with --overwrite."""
    out = tmp_path / "parent" / "long"
    convert(str(source), "longformer", out=out, **FAST)
    (out / "notes.txt").write_text("the user's notes")
    return out


@pytest.mark.parametrize("error", [RuntimeError("a late failure"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_late_failure_leaves_the_old_output_as_it_was(source, old_output, monkeypatch, error):
    before = snapshot(old_output)

    def fail(out, result, repo_id=None, folder=None):  # the model card: written after the weights
        assert (Path(folder or out) / "model.safetensors").exists()
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(convert_module, "write_model_card", fail)
        with pytest.raises(type(error)):
            convert(str(source), "longformer", out=old_output, overwrite=True, **FAST)
    assert snapshot(old_output) == before
    assert [path.name for path in old_output.parent.iterdir()] == ["long"], "a temporary folder was left"
    convert(str(source), "longformer", out=old_output, overwrite=True, **FAST)
    assert not (old_output / "notes.txt").exists() and (old_output / "README.md").exists()
    assert [path.name for path in old_output.parent.iterdir()] == ["long"]


def test_a_failed_conversion_leaves_no_folder_it_made(source, tmp_path, monkeypatch):
    def fail(out, result, repo_id=None, folder=None):
        raise RuntimeError("a late failure")

    monkeypatch.setattr(convert_module, "write_model_card", fail)
    with pytest.raises(RuntimeError):
        convert(str(source), "longformer", out=tmp_path / "new" / "deeper" / "long", **FAST)
    assert not (tmp_path / "new").exists()


# Runs in a subprocess: converts into an existing folder with --overwrite and stalls once the weights are written,
# after saying where it writes, so that the test can kill it there.
STALLING_CONVERSION = textwrap.dedent('''
    import importlib, sys, time
    from pathlib import Path

    convert_module = importlib.import_module("hf_efficient.conversion.convert")

    def stall(out, result, repo_id=None, folder=None):
        Path(sys.argv[3]).write_text(str(folder or out))
        time.sleep(600)

    convert_module.write_model_card = stall
    convert_module.convert(sys.argv[1], "longformer", out=sys.argv[2], overwrite=True, max_length=128, check=False,
                           attention_window=8)
''')


def test_a_killed_conversion_leaves_the_old_output_as_it_was(source, old_output, tmp_path):
    before = snapshot(old_output)
    script, ready = tmp_path / "stalling_conversion.py", tmp_path / "writing-into"
    script.write_text(STALLING_CONVERSION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, str(script), str(source), str(old_output), str(ready)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert process.poll() is None, f"the conversion ended early:\n{process.communicate()[1][-4000:]}"
            assert time.monotonic() < deadline, "the conversion never reached its model card"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert snapshot(old_output) == before
    writing = Path(ready.read_text())  # left by the kill: a hidden temporary folder beside --out
    assert writing.parent == old_output.parent and writing.name.startswith(".long.tmp-")
    assert (writing / "model.safetensors").exists()


@pytest.mark.parametrize("where", ["the source", "its parent", "a module folder inside it", "a link to it"])
def test_out_may_not_be_the_source_nor_contain_it_nor_lie_inside_it(source, tmp_path, capsys, no_work, where):
    out = {"the source": source, "its parent": source.parent, "a module folder inside it": source / "1_Pooling",
           "a link to it": tmp_path / "link"}[where]
    if where == "a link to it":
        out.symlink_to(source, target_is_directory=True)
    before = snapshot(source.parent)
    code, err = run_cli(["convert", "--from", str(source), "--out", str(out), "--overwrite", "--max-length", "128"],
                        capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --out ")
    assert "the source folder" in err[0] and "outside the source" in err[0]
    assert snapshot(source.parent) == before


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A folder outside the source with a file nobody meant to publish."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "secret.txt").write_text("not for the Hub")
    return folder


@pytest.mark.parametrize("path", ["..", ".", "1_Pooling/../..", "ABSOLUTE"])
def test_a_module_path_leading_out_of_the_source_is_refused(tmp_path, elsewhere, no_work, path):
    source = save_sentence_transformers_source(tmp_path / "bert")
    path = str(elsewhere) if path == "ABSOLUTE" else path
    modules = json.loads((source / "modules.json").read_text())
    (source / "modules.json").write_text(json.dumps([*modules, {"idx": 2, "name": "2", "path": path}]))
    with pytest.raises(ConversionError, match=r"names module path .* leads outside the source folder"):
        convert(str(source), "longformer", out=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("link", ["sentence_bert_config.json", "1_Pooling/extra.json", "1_Pooling/data",
                                  "2_Linked"])
def test_a_link_leading_out_of_the_source_is_refused(tmp_path, elsewhere, capsys, no_work, link):
    source = save_sentence_transformers_source(tmp_path / "bert")
    if link == "sentence_bert_config.json":
        (source / link).unlink()
    target = elsewhere / "secret.txt" if link.endswith(".json") else elsewhere
    (source / link).symlink_to(target, target_is_directory=target.is_dir())
    if link == "2_Linked":  # a module folder that is itself a link leading out
        modules = json.loads((source / "modules.json").read_text())
        (source / "modules.json").write_text(json.dumps([*modules, {"idx": 2, "name": "2", "path": link}]))
    code, err = run_cli(["convert", "--from", str(source), "--out", str(tmp_path / "out"), "--max-length", "128"],
                        capsys)
    assert code == 2 and len(err) == 1
    assert f"error: {source / link} is a symbolic link to {target}, outside the source folder" in err[0]
    assert not (tmp_path / "out").exists()


def test_links_inside_the_source_are_copied_as_files(tmp_path):
    source = save_sentence_transformers_source(tmp_path / "bert")
    (source / "1_Pooling" / "same.json").symlink_to("config.json")
    convert(str(source), "longformer", out=tmp_path / "out", **FAST)
    copied = tmp_path / "out" / "1_Pooling" / "same.json"
    assert not copied.is_symlink() and copied.read_text() == (source / "1_Pooling" / "config.json").read_text()


def test_a_hub_cache_snapshot_folder_is_read_through_its_links(tmp_path):
    """A snapshot folder of the Hugging Face cache is links into the repo's blobs: those links are followed."""
    repo = tmp_path / "models--someone--tiny-bert"
    save_sentence_transformers_source(tmp_path / "saved")
    snapshot_folder = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for index, path in enumerate(sorted(p for p in (tmp_path / "saved").rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"blob{index}"
        path.rename(blob)
        link = snapshot_folder / path.relative_to(tmp_path / "saved")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    convert(str(snapshot_folder), "longformer", out=tmp_path / "out", **FAST)
    pooling = tmp_path / "out" / "1_Pooling" / "config.json"
    assert not pooling.is_symlink() and json.loads(pooling.read_text()) == {"pooling_mode_mean_tokens": True}


@pytest.fixture
def never_unpickle(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle was read")

    monkeypatch.setattr(torch, "load", load)


def test_a_source_with_only_pickled_weights_is_refused(tmp_path, capsys, never_unpickle):
    model = save_tiny_bert(tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "bert" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"no safetensors weights \(only \['pytorch_model.bin'\], pickle"):
        convert(str(tmp_path / "bert"), "longformer", out=None, **FAST)
    code, err = run_cli(["convert", "--from", str(tmp_path / "bert"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and "model.safetensors" in err[0]


def test_a_model_folder_with_only_pickled_weights_is_refused(tmp_path, never_unpickle):
    """Our classes load safetensors only (use_safetensors=True by default), through the Auto classes too."""
    model = hf_efficient.EfficientLongformerModel(TESTERS["efficient_longformer"].config("bert"))
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    for loader in (AutoModel, hf_efficient.EfficientLongformerModel):
        with pytest.raises(OSError, match="model.safetensors"):
            loader.from_pretrained(tmp_path)


# (argv after `convert --from SOURCE --out OUT`, a fragment of the one error line)
REFUSALS = {
    "unknown --set key": (["--set", "attention_windw=16"],
                          "efficient_longformer has no config field attention_windw. Its own knobs: "
                          "['attention_dilation', 'attention_window', 'global_first_token']; the backbone's: ["),
    "--set without =": (["--set", "nonsense"], "--set 'nonsense' is not KEY=VALUE"),
    "window on a target without one": (["--to", "performer", "--attention-window", "16"],
                                       "--attention-window is a knob of ['longformer']; performer has no window"),
    "--max-length below the source's": (["--max-length", "32"],
                                        "--max-length 32 is below the source's 64 learned positions, which would be "
                                        "cut off: give --max-length 64 or more."),
    "... also without the check": (["--max-length", "32", "--no-check"], "is below the source's 64 learned positions"),
    "a bad repo id": (["--push-to-hub", "not a repo id"], "--push-to-hub not a repo id:"),
    "an empty fidelity check": (["--check-tokens", "0"], "check_tokens=0: the fidelity check needs at least one token"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_cli_refusals_are_one_error_line_before_any_work(source, tmp_path, capsys, no_work, case):
    extra, fragment = REFUSALS[case]
    out = tmp_path / "out"
    code, err = run_cli(["convert", "--from", str(source), "--out", str(out), *extra], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert fragment in err[0]
    assert not out.exists()


def test_a_rotary_source_may_record_a_shorter_length(tmp_path):
    """Rotary positions have no table to cut: a shorter --max-length only records the length the model is meant for."""
    save_tiny_llama(tmp_path / "llama")
    result = convert(str(tmp_path / "llama"), "longformer", out=None, max_length=32, attention_window=8, check=False)
    assert result.model.config.max_position_embeddings == 32 and result.source_length == 64


def test_unknown_config_keys_are_refused_from_python_too(source):
    with pytest.raises(ConversionError, match="has no config field attention_windw"):
        convert(str(source), "longformer", out=None, attention_windw=16)


def test_a_missing_source_folder_says_how_to_give_a_hub_id(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in ("./missing_dir", str(tmp_path / "missing_dir")):
        code, err = run_cli(["convert", "--from", missing, "--out", "out"], capsys)
        assert code == 2 and err == [f"error: The source folder {missing} does not exist. To convert a model from "
                                     "the Hub, give its id as owner/name, e.g. --from "
                                     "sentence-transformers/all-MiniLM-L6-v2."]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("depth", ["out", "a/out"], ids=["in it", "below it"])
def test_an_unwritable_out_parent_is_refused_before_any_work(source, tmp_path, capsys, no_work, monkeypatch, depth):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere, so stand in the answer an unprivileged user gets
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == parent else
                            access(path, mode, **kw))
    try:
        code, err = run_cli(["convert", "--from", str(source), "--out", str(parent / depth)], capsys)
    finally:
        parent.chmod(0o755)
    assert code == 2 and err == [f"error: {parent} is read-only or not writable by this user: choose an --out "
                                 "elsewhere."]
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("failure", [
    HfHubHTTPError("403 Forbidden: no write access to someone/tiny-long", response=SimpleNamespace(headers={},
                                                                                                  request=None)),
    OfflineModeIsEnabled("HF_HUB_OFFLINE is set"),
], ids=["http", "offline"])
def test_a_failed_upload_is_one_error_line_and_the_folder_stays_complete(source, tmp_path, capsys, monkeypatch,
                                                                         failure):
    def create_repo(self, repo_id, **kwargs):
        raise failure

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    out = tmp_path / "long"
    code, err = run_cli(["convert", "--from", str(source), "--out", str(out), "--max-length", "128", "--no-check",
                         "--attention-window", "8", "--push-to-hub", "someone/tiny-long"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: The converted model is saved in {out}, but uploading it to someone/tiny-long "
                             f"failed: {' '.join(str(failure).split())}")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "1_Pooling"} <= {
        path.name for path in out.iterdir()}
    assert type(AutoModel.from_pretrained(out)) is hf_efficient.EfficientLongformerModel
