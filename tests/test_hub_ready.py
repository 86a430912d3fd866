"""Hub-ready conversion output: every folder `convert` writes loads with `trust_remote_code=True` in a fresh process
that never imports hf_efficient, keeps its remote code when saved again, and uploads all it should.

One fresh process loads every converted folder. Its first load, the causal LM, is the one that finds hf_efficient
unimported, so transformers takes its remote-code path; every folder is also loaded through the classes its auto_map
names. The in-process models (loaded after `import hf_efficient`) are the reference. Uploads go to a mocked HfApi:
nothing touches the network.
"""

import importlib
import json
import os
import runpy
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
from safetensors.torch import load_file
from test_conversion import save_tiny_bert
from testers import TESTERS
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
)

import hf_efficient
from hf_efficient.auto import AUTO_HEADS, VARIANTS
from hf_efficient.cli import main
from hf_efficient.conversion import ConversionError, convert
from hf_efficient.hub import CONFIG_MODULE, MODELING_MODULE

CODE_FILES = {f"{CONFIG_MODULE}.py", f"{MODELING_MODULE}.py"}
AUTO_NAMES = {"model": "AutoModel", **{head: auto.__name__ for head, auto in AUTO_HEADS.items()}}
BERT_HEADS = ["model", "sequence_classification", "token_classification", "question_answering"]  # + masked_lm
INPUT_IDS = torch.randint(1, 99, (2, 24), generator=torch.Generator().manual_seed(0))

# Runs in a fresh interpreter: load each (key, folder, Auto class) with trust_remote_code=True, without ever
# importing hf_efficient; write the outputs (safetensors) and what was loaded (json) for the test to compare.
REMOTE_LOAD_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch, transformers
    from safetensors.torch import save_file
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    spec = json.load(open(sys.argv[1]))
    ids = torch.tensor(spec["ids"])
    outputs, report = {}, {"hf_efficient_imported_before": "hf_efficient" in sys.modules, "classes": {}}

    def main_output(output):
        for name in ("logits", "start_logits", "last_hidden_state"):
            if getattr(output, name, None) is not None:
                return getattr(output, name).contiguous()

    def name_of(cls):
        return f"{cls.__module__}:{cls.__name__}"

    with torch.no_grad():
        for index, (key, folder, auto_name) in enumerate(spec["cases"]):
            model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
            outputs[key] = main_output(model(input_ids=ids))
            if index == 0:  # the only load that finds hf_efficient unimported: the Auto class must use remote code
                report["first_class"] = name_of(type(model))
                report["first_config_class"] = name_of(type(model.config))
                model.save_pretrained(spec["resave"])
            if auto_name == "AutoModelForCausalLM":
                outputs[key + "/generated"] = model.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
            # every class the folder's auto_map names, resolved as transformers does for a first load
            auto_map = json.load(open(f"{folder}/config.json"))["auto_map"]
            for name, reference in auto_map.items():
                remote_class = get_class_from_dynamic_module(reference, folder)
                report["classes"][f"{key}/{name}"] = [name_of(remote_class), name_of(remote_class.__mro__[1])]
            remote_class = get_class_from_dynamic_module(auto_map[auto_name], folder)
            outputs[key + "/remote_class"] = main_output(remote_class.from_pretrained(folder).eval()(input_ids=ids))
        if spec.get("tokenizer"):
            tokenizer = transformers.AutoTokenizer.from_pretrained(spec["tokenizer"], trust_remote_code=True)
            outputs["tokenized"] = torch.tensor(tokenizer("the cat sat.")["input_ids"])
        # both ways in one process: after remote code imported it, the package's registration loads the same folder
        import hf_efficient
        key, folder, auto_name = spec["cases"][0]
        local = getattr(transformers, auto_name).from_pretrained(folder).eval()
        report["local_class"] = name_of(type(local))
        outputs[key + "/local"] = main_output(local(input_ids=ids))
        report["package_auto_class"] = sorted(
            {str(cls._auto_class) for variant in hf_efficient.VARIANTS.values() for cls in variant.classes}
        )
    save_file(outputs, spec["out"] + ".safetensors")
    json.dump(report, open(spec["out"] + ".json", "w"))
''')


def main_output(output) -> torch.Tensor:
    for name in ("logits", "start_logits", "last_hidden_state"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """key -> (converted folder, Auto class name): Longformer from BERT with every head, causal Longformer from
    GPT-2, and every other registered variant (bare model) from BERT. No fidelity check: speed."""
    root = tmp_path_factory.mktemp("hub_ready")
    save_tiny_bert(root / "bert_mlm", head=BertForMaskedLM, seed=1)
    save_tiny_bert(root / "bert", seed=2)
    torch.manual_seed(3)
    GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(
        root / "gpt2"
    )
    found = {}

    def add(key, source, target, head, **options):
        convert(str(root / source), target, out=root / key, max_length=128, head=head, check=False, **options)
        found[key] = (root / key, AUTO_NAMES[head])

    add("longformer-masked_lm", "bert_mlm", "longformer", "masked_lm", attention_window=8)
    for head in BERT_HEADS:
        add(f"longformer-{head}", "bert", "longformer", head, attention_window=8)
    add("longformer-causal_lm", "gpt2", "longformer", "causal_lm", attention_window=8)
    for model_type in sorted(VARIANTS):
        if model_type != "efficient_longformer":
            source = "bert" if VARIANTS[model_type].model.attention_class.supports_bidirectional else "gpt2"
            add(model_type.removeprefix("efficient_"), source, model_type, "model", **TESTERS[model_type].mechanism)
    return found


def run_fresh(root, name: str, cases: list, tokenizer: str | None = None) -> subprocess.Popen:
    spec = {"ids": INPUT_IDS.tolist(), "cases": [[key, str(folder), auto] for key, folder, auto in cases],
            "resave": str(root / f"resaved-{name}"), "out": str(root / name), "tokenizer": tokenizer}
    (root / f"{name}-spec.json").write_text(json.dumps(spec))
    (root / "remote_load.py").write_text(REMOTE_LOAD_SCRIPT)
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(root / "remote_load.py"), str(root / f"{name}-spec.json")], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def fresh(folders):
    """One fresh interpreter loads every folder, the causal LM first: (outputs, report)."""
    root = folders["longformer-causal_lm"][0].parent
    keys = ["longformer-causal_lm", *(key for key in folders if key != "longformer-causal_lm")]
    process = run_fresh(root, "fresh", [(key, *folders[key]) for key in keys],
                        tokenizer=str(folders["longformer-masked_lm"][0]))
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, f"the fresh process failed:\n{stdout}\n{stderr[-4000:]}"
    return load_file(root / "fresh.safetensors"), json.loads((root / "fresh.json").read_text())


def in_process_output(folder, auto_name: str, ids=INPUT_IDS) -> torch.Tensor:
    model = getattr(transformers, auto_name).from_pretrained(folder).eval()
    assert type(model).__module__.startswith("hf_efficient.")
    with torch.no_grad():
        return main_output(model(input_ids=ids))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def heads_for_direction(variant, causal: bool) -> dict[str, type]:
    """The heads a config of this direction builds: no masked-LM head on a causal model, no causal-LM head on an
    encoder."""
    return {head: cls for head, cls in variant.heads.items() if head != ("masked_lm" if causal else "causal_lm")}


def test_config_names_remote_code_for_every_head_it_can_build(folders):
    for key, (folder, _) in folders.items():
        config = json.loads((folder / "config.json").read_text())
        variant = VARIANTS[config["model_type"]]
        expected = {"AutoConfig": f"{CONFIG_MODULE}.{variant.config.__name__}",
                    "AutoModel": f"{MODELING_MODULE}.{variant.model.__name__}"}
        expected |= {AUTO_NAMES[head]: f"{MODELING_MODULE}.{cls.__name__}"
                     for head, cls in heads_for_direction(variant, config["is_causal"]).items()}
        assert config["auto_map"] == expected, key
        assert {path.name for path in folder.iterdir()} >= CODE_FILES, key


@pytest.mark.parametrize("model_type", sorted(VARIANTS))
def test_auto_map_lists_exactly_the_heads_the_config_can_build(model_type, tmp_path):
    """Per direction the variant has: a head is in the saved auto_map (and its remote-code file) if and only if it
    builds from the config (a causal model has no masked-LM head, an encoder no causal-LM head)."""
    variant, directions = VARIANTS[model_type], []
    for style in ("bert", "gpt2"):
        try:
            config = TESTERS[model_type].config(style)
            variant.model(config)
        except ValueError:  # the mechanism doesn't run in this direction (Linformer, BigBird are encoders only)
            assert style == "gpt2" and not variant.model.attention_class.supports_causal
            continue
        directions.append(style)
        config.save_pretrained(tmp_path / style)
        auto_map = json.loads((tmp_path / style / "config.json").read_text())["auto_map"]
        code = (tmp_path / style / f"{MODELING_MODULE}.py").read_text()
        for head, head_class in variant.heads.items():
            try:
                head_class(config)
                builds = True
            except ValueError:
                builds = False
            assert (AUTO_NAMES[head] in auto_map) == builds, (style, head)
            assert (f"class {head_class.__name__}(" in code) == builds, (style, head)
    assert "bert" in directions, "every variant has an encoder"


@pytest.mark.parametrize("head", ["masked_lm", *BERT_HEADS, "causal_lm"])
def test_each_longformer_head_loads_as_remote_code_in_a_fresh_process(folders, fresh, head):
    key = f"longformer-{head}"
    outputs, report = fresh
    folder, auto_name = folders[key]
    reference = in_process_output(folder, auto_name)
    assert max_diff(outputs[key], reference) <= 1e-6  # the Auto class with trust_remote_code=True
    assert max_diff(outputs[f"{key}/remote_class"], reference) <= 1e-6  # the class its auto_map names
    remote_class, base = report["classes"][f"{key}/{auto_name}"]
    assert remote_class.startswith("transformers_modules.") and f".{MODELING_MODULE}:" in remote_class
    package_class = getattr(hf_efficient, remote_class.split(":")[1])
    assert base == f"{package_class.__module__}:{package_class.__name__}"
    if head == "causal_lm":
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        expected = model.generate(INPUT_IDS[:1, :8], max_new_tokens=4, do_sample=False)
        assert torch.equal(outputs[f"{key}/generated"], expected)


def test_the_first_load_in_a_fresh_process_really_is_remote_code(fresh):
    _, report = fresh
    assert not report["hf_efficient_imported_before"]
    assert report["first_class"].startswith("transformers_modules.")
    assert report["first_class"].endswith(f".{MODELING_MODULE}:EfficientLongformerForCausalLM")
    assert report["first_config_class"].endswith(f".{CONFIG_MODULE}:EfficientLongformerConfig")


@pytest.mark.parametrize("model_type", sorted(VARIANTS))
def test_every_variant_loads_as_remote_code(folders, fresh, model_type):
    """AutoConfig, AutoModel and every head in the auto_map resolve to the remote files' subclasses of the package's
    classes; the bare model loaded through its remote class reproduces the in-process one."""
    outputs, report = fresh
    variant = VARIANTS[model_type]
    key = "longformer-model" if model_type == "efficient_longformer" else model_type.removeprefix("efficient_")
    names = {"AutoConfig": variant.config, "AutoModel": variant.model}
    causal = not variant.model.attention_class.supports_bidirectional  # converted from GPT-2 (causal-only variants)
    names |= {AUTO_NAMES[head]: cls for head, cls in heads_for_direction(variant, causal=causal).items()}
    assert set(names) == set(json.loads((folders[key][0] / "config.json").read_text())["auto_map"])
    for auto_name, package_class in names.items():
        remote_class, base = report["classes"][f"{key}/{auto_name}"]
        assert remote_class.startswith("transformers_modules.") and remote_class.endswith(f":{package_class.__name__}")
        assert base == f"{package_class.__module__}:{package_class.__name__}"
    reference = in_process_output(folders[key][0], "AutoModel")
    assert max_diff(outputs[f"{key}/remote_class"], reference) <= 1e-6
    assert max_diff(outputs[key], reference) <= 1e-6


def test_both_ways_in_one_process_agree_and_leave_the_package_classes_unmarked(folders, fresh):
    """After remote code imported hf_efficient, the plain Auto load uses the package's own classes, with the same
    outputs; transformers' register_for_auto_class marked only the remote subclasses (a marked package class would
    make every later save copy the package's own files)."""
    outputs, report = fresh
    assert report["local_class"] == "hf_efficient.models.longformer.modeling_longformer:EfficientLongformerForCausalLM"
    assert max_diff(outputs["longformer-causal_lm/local"], outputs["longformer-causal_lm"]) == 0
    assert report["package_auto_class"] == ["None"]
    reference = AutoTokenizer.from_pretrained(folders["longformer-masked_lm"][0])("the cat sat.")["input_ids"]
    assert outputs["tokenized"].tolist() == reference


def test_a_model_loaded_as_remote_code_saves_its_remote_code_again(folders, fresh):
    """transformers copies the remote classes' files on save (their `_auto_class` is set): the same two files."""
    folder, auto_name = folders["longformer-causal_lm"]
    resaved = folder.parent / "resaved-fresh"
    for file in CODE_FILES:
        assert (resaved / file).read_text() == (folder / file).read_text()
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == json.loads(
        (folder / "config.json").read_text())["auto_map"]
    assert max_diff(in_process_output(resaved, auto_name), in_process_output(folder, auto_name)) == 0


def test_a_converted_model_saved_again_in_process_stays_hub_ready(folders, tmp_path):
    """Fine-tuning checkpoints of a converted model (loaded with `import hf_efficient`) keep the remote code."""
    folder, _ = folders["longformer-masked_lm"]
    AutoModelForMaskedLM.from_pretrained(folder).save_pretrained(tmp_path)
    for file in CODE_FILES:
        assert (tmp_path / file).read_text() == (folder / file).read_text()
    assert "auto_map" in json.loads((tmp_path / "config.json").read_text())


def foreign_auto_map(marker: Path) -> dict:
    """An auto_map a config might arrive with: a class name carrying code, a module beside the weights that the package
    doesn't write (evil.py, which creates `marker` when imported), and code kept in another repo."""
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {"AutoConfig": f"{CONFIG_MODULE}.EfficientLongformerConfig",
            "AutoModel": f"{MODELING_MODULE}.Evil({touch} or package_class",
            "AutoModelForMaskedLM": "evil.EvilForMaskedLM",
            "AutoModelForSequenceClassification": "someone/else--modeling.Evil"}


def test_every_save_is_hub_ready_with_only_the_package_code(tmp_path):
    """Saves of models never converted load with trust_remote_code=True in a fresh process that doesn't import
    hf_efficient: one built with from_config, and one whose config arrived with a foreign auto_map, saved back into the
    folder it came from (evil.py beside it): the auto_map is replaced, not merged, its text never reaches the code
    files, and its code never runs."""
    marker = tmp_path / "foreign-code-ran"
    AutoModelForCausalLM.from_config(TESTERS["efficient_longformer"].config("gpt2")).save_pretrained(
        tmp_path / "from_config")
    foreign = TESTERS["efficient_longformer"].config("bert")
    foreign.auto_map = foreign_auto_map(marker)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n\nclass EvilForMaskedLM:\n    pass\n")
    AutoModelForMaskedLM.from_config(foreign).save_pretrained(tmp_path / "foreign")
    hf_efficient.EfficientLongformerForMaskedLM(TESTERS["efficient_longformer"].config("bert")).save_pretrained(
        tmp_path / "clean")
    for file in CODE_FILES:
        text = (tmp_path / "foreign" / file).read_text()
        assert text == (tmp_path / "clean" / file).read_text() and "pathlib" not in text
    saved = json.loads((tmp_path / "foreign" / "config.json").read_text())["auto_map"]
    assert saved == json.loads((tmp_path / "clean" / "config.json").read_text())["auto_map"]
    assert {"evil.EvilForMaskedLM", "someone/else--modeling.Evil"}.isdisjoint(saved.values())

    cases = [("from_config", tmp_path / "from_config", "AutoModelForCausalLM"),
             ("foreign", tmp_path / "foreign", "AutoModelForMaskedLM")]
    process = run_fresh(tmp_path, "saved", cases)
    stdout, stderr = process.communicate(timeout=600)
    assert not marker.exists(), "the foreign auto_map's code ran"
    assert process.returncode == 0, f"the fresh process failed:\n{stdout}\n{stderr[-4000:]}"
    outputs, report = load_file(tmp_path / "saved.safetensors"), json.loads((tmp_path / "saved.json").read_text())
    assert not report["hf_efficient_imported_before"]
    assert report["first_class"].endswith(f".{MODELING_MODULE}:EfficientLongformerForCausalLM")
    assert report["first_class"].startswith("transformers_modules.")
    for key, folder, auto_name in cases:
        assert max_diff(outputs[key], in_process_output(folder, auto_name)) <= 1e-6, key


def test_remote_code_without_the_package_says_how_to_install_it(folders, monkeypatch):
    code = folders["longformer-masked_lm"][0] / f"{CONFIG_MODULE}.py"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "hf_efficient", None)  # `import hf_efficient` now raises ImportError
        with pytest.raises(ImportError, match="pip install hf-efficient"):
            runpy.run_path(str(code))
    monkeypatch.delattr(hf_efficient, "EfficientLongformerConfig")  # an older package without this variant
    with pytest.raises(ImportError, match=r"has no EfficientLongformerConfig: `pip install hf-efficient --upgrade`"):
        runpy.run_path(str(code))


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
            *CODE_FILES} <= set(commit.files)
    assert "auto_map" in json.loads(commit.files["config.json"])
    card = commit.files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "org/bert-tiny" and metadata["library_name"] == "transformers"
    assert {"hf-efficient", "efficient_longformer"} <= set(metadata["tags"])
    assert 'from_pretrained("someone/tiny-long", trust_remote_code=True)' in card
    with pytest.raises(ConversionError, match="--out"):
        convert(str(tmp_path / "bert"), "longformer", out=None, push_to_hub="someone/tiny-long")


def test_model_push_to_hub_uploads_the_remote_code(folders, hub):
    """transformers' own push_to_hub (what Trainer calls) saves to a temporary folder: the remote code goes too."""
    folder, _ = folders["longformer-masked_lm"]
    AutoModelForMaskedLM.from_pretrained(folder).push_to_hub("someone/tiny-long")
    (commit,) = hub
    assert {"config.json", "model.safetensors", "README.md", *CODE_FILES} <= set(commit.files)
    assert json.loads(commit.files["config.json"])["auto_map"] == json.loads((folder / "config.json").read_text())[
        "auto_map"]
    for file in CODE_FILES:
        assert commit.files[file] == (folder / file).read_bytes()
