"""The bundle generator (hf_efficient.bundle): the committed modeling/ is what it writes now, the files import only
torch, transformers and the standard library, and on a small package of its own it inlines what the roots need and
refuses what it can't inline faithfully."""

import ast
import importlib
import sys
import textwrap
from pathlib import Path

import pytest

import hf_efficient.bundle as generator
from hf_efficient.auto import VARIANTS
from hf_efficient.bundle import REGENERATE, BundleError, bundle, main, render, select, stale_files, write

MODELING = Path(__file__).resolve().parents[1] / "modeling"
ALLOWED = {"torch", "transformers", *sys.stdlib_module_names}


def test_the_committed_bundles_are_what_the_generator_writes_now():
    stale = stale_files(MODELING)
    assert not stale, f"modeling/ is stale ({stale}): regenerate it with `{REGENERATE}` and commit the result."


def test_a_variant_without_its_bundle_or_a_bundle_without_its_variant_is_stale(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert stale_files(tmp_path) == []
    assert {path.name for path in tmp_path.iterdir()} == {bundle(model_type).folder for model_type in VARIANTS}
    files = bundle("efficient_performer")
    (tmp_path / files.folder / f"{files.modeling_module}.py").unlink()
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "modeling_gone.py").write_text(f'"""{generator.GENERATED_MARK} ..."""\n')
    assert stale_files(tmp_path) == sorted([f"{files.folder}/{files.modeling_module}.py", "gone/modeling_gone.py"])
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert f"Regenerate them with `{REGENERATE}`" in capsys.readouterr().err
    write(tmp_path)
    assert stale_files(tmp_path) == [] and not (tmp_path / "gone").exists()


def imports_of(text: str) -> tuple[list[str], list[tuple[int, str]]]:
    """The relative imports of a file, and (line, module) of every import outside a `try` that isn't relative."""
    relative, unguarded = [], []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.ImportFrom) and node.level:
            relative.append(node.module)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and not guarded:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            unguarded.extend((node.lineno, name) for name in names)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded or isinstance(node, ast.Try))

    visit(ast.parse(text), False)
    return relative, unguarded


@pytest.mark.parametrize("model_type", sorted(VARIANTS))
def test_bundles_import_only_torch_transformers_and_the_standard_library(model_type):
    """Imports of those three only, but inside a `try` (transformers' check_imports skips those: optional kernels);
    the one relative import is the modeling file's, of its configuration file."""
    files = bundle(model_type)
    for name, text in files.files.items():
        relative, unguarded = imports_of(text)
        assert [(line, module) for line, module in unguarded if module.split(".")[0] not in ALLOWED] == [], name
        assert relative == ([files.config_module] if name.startswith("modeling_") else []), name


@pytest.mark.parametrize("model_type", sorted(VARIANTS))
def test_the_configuration_file_holds_only_what_the_config_needs(model_type):
    """No torch, no attention or model class: the config class and what it reads."""
    variant, files = VARIANTS[model_type], bundle(model_type)
    config_text = files.files[f"{files.config_module}.py"]
    modeling_text = files.files[f"{files.modeling_module}.py"]
    assert "import torch" not in config_text
    attention = variant.model.attention_class.__name__
    assert f"class {attention}(" in modeling_text and f"class {attention}(" not in config_text
    assert f"class {variant.config.__name__}(" in config_text and f"class {variant.config.__name__}(" not in \
        modeling_text


# a small package of the generator's own, under tmp_path/hf_efficient
TOY = {
    "__init__.py": "",
    "core/__init__.py": "from .helpers import used\n",
    "core/plugin_only.py": "def plugin_only(function):\n    return function\n",
    "core/helpers.py": '''
        import math

        from transformers.utils import logging

        logger = logging.get_logger(__name__)

        # kept with its comment
        def used(x):
            return math.sqrt(x)


        def unused():
            return 1
    ''',
    "core/late.py": "def late(x):\n    return x * 4\n",
    "models/__init__.py": "",
    "models/toy/__init__.py": "",
    "models/toy/configuration_toy.py": '''
        from ...core.plugin_only import plugin_only


        class ToyConfig:
            size = 3

            @plugin_only
            def save(self):
                from ...hub import write_everything
                write_everything(self)
    ''',
    "models/toy/modeling_toy.py": '''
        from transformers.utils import logging

        from ...core import used
        from .configuration_toy import ToyConfig

        logger = logging.get_logger(__name__)


        def kernel():
            try:
                import a_library_nobody_has
            except ImportError:
                return None
            return a_library_nobody_has


        class ToyModel:
            config_class = ToyConfig

            def forward(self, x):
                from ...core.late import late

                logger.info("forward")
                return used(late(x)) + ToyConfig.size + (kernel() is None)
    ''',
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Point the generator at a package written from `files` ({path: text}); returns the writer."""
    root = tmp_path / "src" / "hf_efficient"

    def make(files: dict[str, str]) -> None:
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(textwrap.dedent(text).lstrip("\n"))
        generator.parse_module.cache_clear()

    monkeypatch.setattr(generator, "PACKAGE_DIR", root)
    make(TOY)
    yield make
    generator.parse_module.cache_clear()


def toy_files() -> tuple[str, str]:
    config = select([("hf_efficient.models.toy.configuration_toy", "ToyConfig")])
    modeling = select([("hf_efficient.models.toy.modeling_toy", "ToyModel")], provided=config)
    return render(config, "Toy config.", None), render(modeling, "Toy model.", ("configuration_toy",
                                                                                 sorted(modeling.provided)))


def test_the_generator_inlines_what_the_roots_need_and_nothing_else(toy, tmp_path):
    config_text, modeling_text = toy_files()
    assert "class ToyConfig:" in config_text and "def save" not in config_text and "hub" not in config_text
    assert "from .configuration_toy import ToyConfig\n" in modeling_text
    assert "# kept with its comment\ndef used(x):" in modeling_text and "def unused" not in modeling_text
    assert "def late(x):" in modeling_text and "from ...core" not in modeling_text  # the lazy import is gone
    assert "        import a_library_nobody_has\n" in modeling_text  # guarded: kept where it was
    assert modeling_text.count("logger = logging.get_logger(__name__)") == 1  # two identical definitions: one copy
    assert "import math\n\nfrom transformers.utils import logging\n\nfrom .configuration_toy" in modeling_text
    package = tmp_path / "out" / "toy_bundle"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "configuration_toy.py").write_text(config_text)
    (package / "modeling_toy.py").write_text(modeling_text)
    sys.path.insert(0, str(package.parent))
    try:
        module = importlib.import_module("toy_bundle.modeling_toy")
        assert module.ToyModel().forward(4.0) == 4.0 + 3 + 1  # sqrt(4 * 4) + size + (no optional library)
        assert module.ToyModel.config_class is importlib.import_module("toy_bundle.configuration_toy").ToyConfig
    finally:
        sys.path.remove(str(package.parent))
        for name in [name for name in sys.modules if name.startswith("toy_bundle")]:
            del sys.modules[name]


def test_two_different_definitions_of_one_name_are_refused(toy):
    toy({"core/late.py": "def used(x):\n    return -x\n\n\ndef late(x):\n    return used(x)\n"})
    with pytest.raises(BundleError, match=r"Name clash in the bundle: 'used' is .*core/helpers.py.*core/late.py"):
        toy_files()


def test_a_package_name_imported_under_another_name_is_refused(toy):
    toy({"models/toy/modeling_toy.py": "from ...core.helpers import used as root\n\n\nclass ToyModel:\n    f = root\n"})
    with pytest.raises(BundleError, match=r"modeling_toy.py:1: .*import used as root.* renames a package name"):
        toy_files()


def test_an_unguarded_import_of_another_library_is_refused(toy):
    toy({"core/late.py": "def late(x):\n    import numpy\n\n    return numpy.sqrt(x)\n"})
    with pytest.raises(BundleError, match=r"core/late.py:2: imports numpy outside a `try`"):
        toy_files()
