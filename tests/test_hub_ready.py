"""Hub-ready folders: every folder `save_pretrained` and `convert` write carries its variant's self-contained bundle
and loads with `trust_remote_code=True` in a fresh process where hf_efficient cannot be imported, with the plugin's
outputs; it loads with the plugin's own classes where the plugin is imported (folders of older versions too); its
card says which plugin version wrote it; uploads carry all of it.

One fresh process loads every folder (every variant, every head). It runs `python -I -S` with only the
site-packages folders on sys.path (no .pth file runs, so an editable install of hf-efficient is invisible too) and a
working directory outside the source tree. The in-process models (loaded with the plugin) are the reference. Uploads
go to a mocked HfApi: nothing touches the network.
"""

import importlib
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
import yaml
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file
from test_conversion import save_tiny_bert
from testers import TESTERS
from transformers import AutoModelForMaskedLM, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

import hf_efficient
from hf_efficient.auto import AUTO_HEADS, VARIANTS
from hf_efficient.bundle import bundle
from hf_efficient.cli import main
from hf_efficient.conversion import ConversionError, convert

AUTO_NAMES = {"model": "AutoModel", **{head: auto.__name__ for head, auto in AUTO_HEADS.items()}}
OUTPUT_FIELDS = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits")
LEGACY = Path(__file__).parent / "fixtures" / "legacy_remote_code"

# Runs in a fresh `python -I -S`: put only the site-packages folders on sys.path, check that hf_efficient can't be
# imported, load each (key, folder, Auto class) with trust_remote_code=True, and write its outputs (safetensors) and
# what was loaded (json) for the tests to compare.
BUNDLE_LOAD_SCRIPT = textwrap.dedent('''
    import json, sys
    spec = json.load(open(sys.argv[1]))
    sys.path.extend(spec["site_packages"])
    report = {"classes": {}, "auto_map_classes": {}}
    try:
        import hf_efficient  # noqa: F401
        report["hf_efficient_importable"] = True
    except ImportError:
        report["hf_efficient_importable"] = False
    import torch, transformers
    from safetensors.torch import load_file, save_file
    report["libraries"] = [transformers.__file__, torch.__file__]

    def name_of(cls):
        return f"{cls.__module__}:{cls.__name__}"

    device = spec["device"]
    torch.set_num_threads(spec["threads"])  # the test process's: the same kernels' summation order, the same floats
    inputs, outputs = {name: tensor.to(device) for name, tensor in load_file(spec["inputs"]).items()}, {}
    with torch.no_grad():
        for key, folder, auto_name, options in spec["cases"]:
            model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True, **options)
            model = model.to(device).eval()
            report["classes"][key] = [name_of(type(model)), name_of(type(model.config))]
            output = model(**{name[len(key) + 1:]: tensor for name, tensor in inputs.items()  # the case's inputs
                              if name.startswith(key + "/")})
            for field in spec["fields"]:
                if getattr(output, field, None) is not None:
                    outputs[f"{key}/{field}"] = getattr(output, field).float().cpu().contiguous()
            if auto_name == "AutoModelForCausalLM":
                outputs[key + "/generated"] = model.generate(inputs[key + "/input_ids"][:1, :8], max_new_tokens=4,
                                                             do_sample=False).cpu()
            # every class the folder's auto_map names, in the modules the Auto class loaded (transformers resolves
            # each through get_class_from_dynamic_module, which gives the same module for the same folder)
            modules = {type(model).__module__.split(".")[-1]: sys.modules[type(model).__module__],
                       type(model.config).__module__.split(".")[-1]: sys.modules[type(model.config).__module__]}
            auto_map = json.load(open(f"{folder}/config.json"))["auto_map"]
            report["auto_map_classes"][key] = {
                name: name_of(getattr(modules[reference.split(".")[0]], reference.split(".")[1]))
                for name, reference in auto_map.items()}
            if key == spec["resave"][0]:
                model.save_pretrained(spec["resave"][1])
    report["package_modules"] = sorted(name for name in sys.modules if name.split(".")[0] == "hf_efficient")
    save_file(outputs, spec["out"] + ".safetensors")
    json.dump(report, open(spec["out"] + ".json", "w"))
''')


def outputs_of(model, inputs: dict) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    with torch.no_grad():
        output = model(**{name: tensor.to(device) for name, tensor in inputs.items()})
    return {field: getattr(output, field).float().cpu() for field in OUTPUT_FIELDS
            if getattr(output, field, None) is not None}


def head_cases() -> list[tuple[str, str, str]]:
    """(key, model_type, head) for every variant and head: the heads of an encoder, and the causal LM in the causal
    direction where the mechanism has one."""
    cases = []
    for model_type, variant in sorted(VARIANTS.items()):
        for head in ["model", *variant.heads]:
            if head == "causal_lm" and not variant.model.attention_class.supports_causal:
                continue
            cases.append((f"{model_type.removeprefix('efficient_')}-{head}", model_type, head))
    return cases


def model_class(model_type: str, head: str) -> type:
    variant = VARIANTS[model_type]
    return variant.model if head == "model" else variant.heads[head]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """key -> (folder, Auto class name, inputs): a tiny random model of every variant and head, saved with
    save_pretrained (the plugin's classes), and two `convert` outputs (a BERT masked LM to Longformer, a GPT-2 to a
    causal Performer)."""
    root = tmp_path_factory.mktemp("hub_ready")
    found = {}
    for index, (key, model_type, head) in enumerate(head_cases()):
        tester = TESTERS[model_type]
        config = tester.config("gpt2" if head == "causal_lm" else "bert")
        torch.manual_seed(index)
        model_class(model_type, head)(config).eval().save_pretrained(root / key)
        found[key] = (root / key, AUTO_NAMES[head], tester.inputs(config, seed=index))
    save_tiny_bert(root / "bert_mlm", head=BertForMaskedLM, seed=1)
    torch.manual_seed(2)
    GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(
        root / "gpt2")
    for key, source, target, head, options in [
        ("converted-longformer", "bert_mlm", "longformer", "masked_lm", dict(attention_window=8)),
        ("converted-performer", "gpt2", "performer", "causal_lm", TESTERS["efficient_performer"].mechanism),
    ]:
        convert(str(root / source), target, out=root / key, max_length=128, head=head, check=False, **options)
        ids = torch.randint(1, 99, (2, 24), generator=torch.Generator().manual_seed(0))
        found[key] = (root / key, AUTO_NAMES[head], {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return found


def site_packages() -> list[str]:
    """Where this process found torch and transformers, then the site-packages folders."""
    found = [str(Path(module.__file__).parents[1]) for module in (transformers, torch)] + site.getsitepackages()
    return [folder for folder in dict.fromkeys(found) if Path(folder).is_dir()]


def run_fresh(root: Path, name: str, cases: list, resave: tuple[str, Path] = ("", Path()), device: str = "cpu",
              options: dict | None = None) -> tuple[dict, dict]:
    """Load `cases` [(key, folder, auto class name, inputs)] in one fresh process without hf_efficient, with
    from_pretrained keyword arguments `options[key]`, on `device`; returns its (outputs, report)."""
    work = root / f"{name}-work"  # outside the source tree: the cwd can't put hf_efficient on sys.path
    work.mkdir()
    save_file({f"{key}/{input_name}": tensor.contiguous() for key, _, _, inputs in cases
               for input_name, tensor in inputs.items()}, work / "inputs.safetensors")
    options = options or {}
    spec = {"site_packages": site_packages(), "inputs": str(work / "inputs.safetensors"),
            "cases": [[key, str(folder), auto_name, options.get(key, {})] for key, folder, auto_name, _ in cases],
            "fields": OUTPUT_FIELDS, "resave": [resave[0], str(resave[1])], "out": str(work / "out"), "device": device,
            "threads": torch.get_num_threads()}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "load.py").write_text(BUNDLE_LOAD_SCRIPT)
    env = {**os.environ, "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-I", "-S", str(work / "load.py"), str(work / "spec.json")], cwd=work,
                             env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, f"the fresh process failed:\n{process.stdout}\n{process.stderr[-6000:]}"
    return load_file(work / "out.safetensors"), json.loads((work / "out.json").read_text())


@pytest.fixture(scope="module")
def fresh(saved):
    root = next(iter(saved.values()))[0].parent
    cases = [(key, folder, auto_name, inputs) for key, (folder, auto_name, inputs) in saved.items()]
    return run_fresh(root, "fresh", cases, resave=("longformer-causal_lm", root / "resaved"))


def test_the_fresh_process_cannot_import_hf_efficient(fresh):
    _, report = fresh
    assert report["hf_efficient_importable"] is False
    assert report["libraries"] == [transformers.__file__, torch.__file__]  # the libraries this process tests
    assert report["package_modules"] == []


@pytest.mark.parametrize("key", [case[0] for case in head_cases()] + ["converted-longformer", "converted-performer"])
def test_every_variant_and_head_loads_without_the_plugin(saved, fresh, key):
    """The Auto class with trust_remote_code=True builds the bundle's class, with the plugin's outputs (fp32, CPU);
    greedy decoding of a causal LM agrees token for token."""
    outputs, report = fresh
    folder, auto_name, inputs = saved[key]
    config = json.loads((folder / "config.json").read_text())
    files = bundle(config["model_type"])
    model = getattr(transformers, auto_name).from_pretrained(folder).eval()
    assert type(model).__module__.startswith("hf_efficient.")  # the reference: the plugin's class
    model_class_name, config_class_name = report["classes"][key]
    assert model_class_name.startswith("transformers_modules.")
    assert model_class_name.endswith(f".{files.modeling_module}:{type(model).__name__}")
    assert config_class_name.endswith(f".{files.config_module}:{type(model.config).__name__}")
    expected = outputs_of(model, inputs)
    assert set(expected) == {name.split("/")[1] for name in outputs if name.startswith(f"{key}/")} - {"generated"}
    for field, reference in expected.items():
        assert torch.allclose(outputs[f"{key}/{field}"], reference, rtol=0, atol=1e-6), (key, field)
    if auto_name == "AutoModelForCausalLM":
        generated = model.generate(inputs["input_ids"][:1, :8], max_new_tokens=4, do_sample=False)
        assert torch.equal(outputs[f"{key}/generated"], generated)


def test_auto_map_names_the_bundle_classes_of_every_head_the_config_builds(saved, fresh):
    """AutoConfig, AutoModel and one entry per head the config builds, no other; each resolves to the bundle's class
    of that name in the fresh process."""
    _, report = fresh
    for key, (folder, _, _) in saved.items():
        config = json.loads((folder / "config.json").read_text())
        variant, files = VARIANTS[config["model_type"]], bundle(config["model_type"])
        config_object = variant.config.from_pretrained(folder)
        expected = {"AutoConfig": f"{files.config_module}.{variant.config.__name__}",
                    "AutoModel": f"{files.modeling_module}.{variant.model.__name__}"}
        for head, cls in variant.heads.items():
            try:
                cls(config_object)
            except ValueError:
                continue
            expected[AUTO_NAMES[head]] = f"{files.modeling_module}.{cls.__name__}"
        assert config["auto_map"] == expected, key
        for name, reference in expected.items():
            module, class_name = reference.split(".")
            assert report["auto_map_classes"][key][name].endswith(f".{module}:{class_name}"), (key, name)
        for name, text in files.files.items():
            assert (folder / name).read_text() == text, (key, name)


def test_a_model_loaded_from_its_bundle_saves_the_same_bundle(saved, fresh):
    """transformers copies the files of classes it loaded as remote code: the same two files and auto_map."""
    folder, auto_name, inputs = saved["longformer-causal_lm"]
    resaved = folder.parent / "resaved"
    for name in bundle("efficient_longformer").files:
        assert (resaved / name).read_text() == (folder / name).read_text()
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == json.loads(
        (folder / "config.json").read_text())["auto_map"]
    original = outputs_of(getattr(transformers, auto_name).from_pretrained(folder).eval(), inputs)
    again = outputs_of(getattr(transformers, auto_name).from_pretrained(resaved).eval(), inputs)
    assert all(torch.equal(original[field], again[field]) for field in original)


def test_both_ways_in_one_process(saved):
    """With the plugin imported, the Auto classes use the plugin's own classes, trust_remote_code=True or not
    (transformers prefers a model type registered in the process to a folder's code); the bundle's class, loaded
    beside them in the same process, agrees, and loading it marks only its own classes for saving."""
    folder, auto_name, inputs = saved["performer-masked_lm"]
    auto = getattr(transformers, auto_name)
    plugin_model = auto.from_pretrained(folder).eval()
    assert type(plugin_model) is hf_efficient.EfficientPerformerForMaskedLM
    assert type(auto.from_pretrained(folder, trust_remote_code=True)) is hf_efficient.EfficientPerformerForMaskedLM
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    bundle_class = get_class_from_dynamic_module(auto_map[auto_name], str(folder))
    assert bundle_class.__module__.startswith("transformers_modules.")
    assert bundle_class.__name__ == "EfficientPerformerForMaskedLM" and bundle_class is not type(plugin_model)
    bundle_class.register_for_auto_class(auto_name)  # as transformers does when it loads remote code
    bundle_model = bundle_class.from_pretrained(folder).eval()
    expected, found = outputs_of(plugin_model, inputs), outputs_of(bundle_model, inputs)
    assert all(torch.equal(expected[field], found[field]) for field in expected)
    assert {cls._auto_class for variant in VARIANTS.values() for cls in variant.classes} == {None}


def test_a_folder_written_before_bundles_loads_in_this_plugin(saved, tmp_path):
    """A folder as the previous version wrote it (remote code importing the installed package, fixtures/
    legacy_remote_code) loads with the plugin's classes, with or without trust_remote_code, and saving it again
    replaces that code by the bundle."""
    folder, auto_name, inputs = saved["longformer-masked_lm"]
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    for name in bundle("efficient_longformer").files:
        (legacy / name).unlink()
    for name in ("configuration_efficient.py", "modeling_efficient.py"):
        shutil.copy(LEGACY / name, legacy / name)
    config = json.loads((legacy / "config.json").read_text())
    config["auto_map"] = json.loads((LEGACY / "auto_map.json").read_text())
    (legacy / "config.json").write_text(json.dumps(config))
    expected = outputs_of(AutoModelForMaskedLM.from_pretrained(folder).eval(), inputs)
    for trust in (None, True):
        model = AutoModelForMaskedLM.from_pretrained(legacy, trust_remote_code=trust).eval()
        assert isinstance(model, hf_efficient.EfficientLongformerForMaskedLM)
        found = outputs_of(model, inputs)
        assert all(torch.equal(expected[field], found[field]) for field in expected), trust
    AutoModelForMaskedLM.from_pretrained(legacy).save_pretrained(legacy)
    names = {path.name for path in legacy.iterdir()}
    assert not names & {"configuration_efficient.py", "modeling_efficient.py"}
    assert set(bundle("efficient_longformer").files) <= names
    assert json.loads((legacy / "config.json").read_text())["auto_map"] == json.loads(
        (folder / "config.json").read_text())["auto_map"]


def test_with_the_plugin_imported_the_folder_code_never_runs(saved, tmp_path):
    """A folder whose bundle another version wrote (here: code that fails when run) loads with the plugin's classes."""
    folder, auto_name, inputs = saved["synthesizer-sequence_classification"]
    older = tmp_path / "older"
    shutil.copytree(folder, older)
    for name in bundle("efficient_synthesizer").files:
        (older / name).write_text('raise RuntimeError("the folder\'s own code ran")\n')
    auto = getattr(transformers, auto_name)
    expected = outputs_of(auto.from_pretrained(folder).eval(), inputs)
    found = outputs_of(auto.from_pretrained(older).eval(), inputs)
    assert all(torch.equal(expected[field], found[field]) for field in expected)


def test_the_card_says_which_plugin_version_wrote_the_folder(saved, tmp_path):
    line = f"Written by hf-efficient {hf_efficient.__version__} ("
    for key in ("longformer-model", "converted-longformer", "converted-performer"):
        card = (saved[key][0] / "README.md").read_text()
        assert line in card, key
        assert f'from_pretrained("{saved[key][0]}", trust_remote_code=True)' in card, key
    model = AutoModelForMaskedLM.from_pretrained(saved["linformer-masked_lm"][0])
    (tmp_path / "README.md").write_text("# My model\n\nWritten by hf-efficient 0.0.1 (its code: old files).\n")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("# My model") and "0.0.1" not in card and card.count(line) == 1
    (tmp_path / "README.md").write_text("# My own card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text().startswith("# My own card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text().count(line) == 1


def foreign_auto_map(marker: Path) -> dict:
    """An auto_map a config might arrive with: a class name carrying code, a module beside the weights that the package
    doesn't write (evil.py, which creates `marker` when imported), and code kept in another repo."""
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {"AutoConfig": "configuration_longformer.EfficientLongformerConfig",
            "AutoModel": f"modeling_longformer.Evil({touch} or object",
            "AutoModelForMaskedLM": "evil.EvilForMaskedLM",
            "AutoModelForSequenceClassification": "someone/else--modeling.Evil"}


def test_a_foreign_auto_map_is_replaced_and_its_code_never_runs(saved, tmp_path):
    """A config that arrives with a foreign auto_map, saved into a folder with evil.py beside it: the auto_map is
    replaced, not merged, and loading the folder with trust_remote_code=True runs only the bundle."""
    marker = tmp_path / "foreign-code-ran"
    config = TESTERS["efficient_longformer"].config("bert")
    config.auto_map = foreign_auto_map(marker)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n\nclass EvilForMaskedLM:\n    pass\n")
    hf_efficient.EfficientLongformerForMaskedLM(config).save_pretrained(tmp_path / "foreign")
    folder = saved["longformer-masked_lm"][0]
    assert json.loads((tmp_path / "foreign" / "config.json").read_text())["auto_map"] == json.loads(
        (folder / "config.json").read_text())["auto_map"]
    for name, text in bundle("efficient_longformer").files.items():
        assert (tmp_path / "foreign" / name).read_text() == text
    AutoModelForMaskedLM.from_pretrained(tmp_path / "foreign", trust_remote_code=True)
    assert not marker.exists(), "the foreign auto_map's code ran"


@pytest.fixture
def hub(monkeypatch):
    """HfApi with create_repo / create_commit recorded instead of sent: {path_in_repo: bytes} per commit."""
    commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            files[operation.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else source
        commits.append(SimpleNamespace(repo_id=repo_id, files=files))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(transformers.utils.hub, "create_and_tag_model_card",
                        lambda repo_id, tags=None, token=None: ModelCard("---\nlibrary_name: transformers\n---\n"))
    return commits


def test_cli_push_to_hub_uploads_the_whole_hub_ready_folder(tmp_path, hub, monkeypatch):
    convert_module = importlib.import_module("hf_efficient.conversion.convert")
    resolve_source = convert_module.resolve_source
    # a local stand-in for a Hub source, so that the card names it as base_model
    monkeypatch.setattr(convert_module, "resolve_source", lambda source: (*resolve_source(source)[:2], "org/bert-tiny"))
    save_tiny_bert(tmp_path / "bert", head=BertForMaskedLM)
    out = tmp_path / "long"
    assert main(["convert", "--from", str(tmp_path / "bert"), "--to", "longformer", "--max-length", "128",
                 "--attention-window", "8", "--no-check", "--out", str(out), "--push-to-hub", "someone/tiny-long"]) == 0
    (commit,) = hub
    assert commit.repo_id == "someone/tiny-long"
    assert set(commit.files) == {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            *bundle("efficient_longformer").files} <= set(commit.files)
    assert "auto_map" in json.loads(commit.files["config.json"])
    card = commit.files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "org/bert-tiny" and metadata["library_name"] == "transformers"
    assert {"hf-efficient", "efficient_longformer"} <= set(metadata["tags"])
    assert 'from_pretrained("someone/tiny-long", trust_remote_code=True)' in card
    assert f"Written by hf-efficient {hf_efficient.__version__} (" in card
    with pytest.raises(ConversionError, match="--out"):
        convert(str(tmp_path / "bert"), "longformer", out=None, push_to_hub="someone/tiny-long")


def test_model_push_to_hub_uploads_the_bundle(saved, hub):
    """transformers' own push_to_hub (what Trainer calls) saves to a temporary folder: the bundle goes too."""
    folder, _, _ = saved["longformer-masked_lm"]
    AutoModelForMaskedLM.from_pretrained(folder).push_to_hub("someone/tiny-long")
    (commit,) = hub
    assert {"config.json", "model.safetensors", "README.md"} <= set(commit.files)
    assert json.loads(commit.files["config.json"])["auto_map"] == json.loads((folder / "config.json").read_text())[
        "auto_map"]
    for name, text in bundle("efficient_longformer").files.items():
        assert commit.files[name].decode() == text
    card = commit.files["README.md"].decode()  # the repo's card (here transformers' template), with the version
    assert card.startswith("---\nlibrary_name: transformers\n---") and version_line_of() in card


def test_config_push_to_hub_uploads_the_bundle_and_card(saved, hub, tmp_path):
    config = transformers.AutoConfig.from_pretrained(saved["sparse_transformer-model"][0])
    config.save_pretrained(str(tmp_path), push_to_hub=True, repo_id="someone/config-only")
    (commit,) = hub
    assert {"config.json", "README.md", *bundle("efficient_sparse_transformer").files} == set(commit.files)
    assert version_line_of() in commit.files["README.md"].decode()


def version_line_of() -> str:
    return f"Written by hf-efficient {hf_efficient.__version__} ("



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
def test_on_cuda_the_bundle_takes_the_plugins_fast_paths(tmp_path):
    """On CUDA, a bundle loaded without the plugin runs every attention backend the plugin has there ("auto" and the
    variant's GPU fast paths, FlexAttention or torch.compile) with the plugin's outputs; head_dim 16, the smallest
    the compiled kernels take."""
    cases, options, expected = [], {}, {}
    for index, (key, model_type, head) in enumerate(head_cases()):
        if head not in ("model", "causal_lm"):
            continue
        tester = TESTERS[model_type]
        config = tester.config("gpt2" if head == "causal_lm" else "bert", num_attention_heads=2)
        torch.manual_seed(index)
        model_class(model_type, head)(config).save_pretrained(tmp_path / key)
        inputs = tester.inputs(config, seed=index)
        for backend in ("auto", *tester.gpu_backends):
            case = f"{key}-{backend}"
            cases.append((case, tmp_path / key, AUTO_NAMES[head], inputs))
            options[case] = {"attention_backend": backend}
            plugin = getattr(transformers, AUTO_NAMES[head]).from_pretrained(tmp_path / key, attention_backend=backend)
            expected[case] = outputs_of(plugin.to("cuda").eval(), inputs)
    outputs, report = run_fresh(tmp_path, "cuda", cases, device="cuda", options=options)
    assert report["hf_efficient_importable"] is False
    for case, fields in expected.items():
        assert report["classes"][case][0].startswith("transformers_modules."), case
        for field, reference in fields.items():
            torch.testing.assert_close(outputs[f"{case}/{field}"], reference, rtol=1e-5, atol=1e-5, msg=case)
