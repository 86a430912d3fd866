"""Hub-ready checkpoint folders: loading with `trust_remote_code=True` without `import hf_efficient`, and uploads.

Every save of a package model is Hub-ready: `EfficientConfig.save_pretrained` sets the config's `auto_map`
(AutoConfig, AutoModel and one AutoModelFor* per head the config can build) and writes the two small files it names,
configuration_efficient.py and modeling_efficient.py, next to the weights. Both come from this module's templates and
the package's own class names only: an `auto_map` a config arrives with is replaced, never copied into code. The
files import the installed hf-efficient package and define one-line subclasses of its classes. Subclasses, not
re-exports: transformers marks a class loaded as remote code with `register_for_auto_class` and, when saving, copies
the file that defines it; a re-exported package class would get marked for the whole process, and its own file
(relative imports into the package) would be copied. The templates are written after transformers' copies, so a save
of a model loaded as remote code writes the package's text too.
"""

from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

CONFIG_MODULE = "configuration_efficient"
MODELING_MODULE = "modeling_efficient"
INSTALL = "pip install hf-efficient"

_HEADER = '''"""Remote code of an hf-efficient checkpoint, written by hf_efficient.hub (regenerated on every save).

The model's code is the hf-efficient package (`{install}`); the classes below are one-line subclasses of
its own, so that `{auto_class}.from_pretrained(path, trust_remote_code=True)` loads this checkpoint without
`import hf_efficient`. With hf_efficient imported, transformers uses the package's classes directly.
"""
'''

_PACKAGE_IMPORT = '''
try:
    import hf_efficient
except ImportError as error:
    raise ImportError(
        "This checkpoint is an hf-efficient model: its code is the hf-efficient package. Install it with "
        "`{install}`."
    ) from error


def package_class(name: str) -> type:
    """The installed hf-efficient's class `name`, or an ImportError saying to upgrade."""
    found = getattr(hf_efficient, name, None)
    if found is None:
        version = hf_efficient.__version__
        raise ImportError(f"The installed hf-efficient {{version}} has no {{name}}: `{install} --upgrade`.")
    return found
'''

_CLASS = '''

class {name}(package_class("{name}")):
    """hf_efficient.{name}; see the package for its documentation."""
'''

_MODEL_CLASS = '''

class {name}(package_class("{name}")):
    """hf_efficient.{name}; see the package for its documentation."""

    config_class = {config_name}
'''


def buildable_heads(config) -> dict[str, type]:
    """The variant's heads this config can build: a causal model has no masked-LM head, an encoder no causal-LM head."""
    from .auto import VARIANTS

    refused = "masked_lm" if config.is_causal else "causal_lm"
    return {head: cls for head, cls in VARIANTS[config.model_type].heads.items() if head != refused}


def remote_code_auto_map(config) -> dict[str, str]:
    """The `auto_map` of a config: AutoConfig, AutoModel and one AutoModelFor* per head it can build, each naming a
    class of the package (by its registry, never by anything the config carries)."""
    from .auto import AUTO_HEADS, VARIANTS

    variant = VARIANTS[config.model_type]
    auto_map = {
        "AutoConfig": f"{CONFIG_MODULE}.{variant.config.__name__}",
        "AutoModel": f"{MODELING_MODULE}.{variant.model.__name__}",
    }
    for head, model_class in buildable_heads(config).items():
        auto_map[AUTO_HEADS[head].__name__] = f"{MODELING_MODULE}.{model_class.__name__}"
    return auto_map


def write_remote_code(folder: str | Path, config) -> list[Path]:
    """Write configuration_efficient.py and modeling_efficient.py for the classes of `remote_code_auto_map(config)`,
    from the templates above."""
    from .auto import VARIANTS

    variant = VARIANTS[config.model_type]
    config_name = variant.config.__name__
    model_names = [variant.model.__name__, *(cls.__name__ for cls in buildable_heads(config).values())]
    package_import = _PACKAGE_IMPORT.format(install=INSTALL)
    config_source = _HEADER.format(install=INSTALL, auto_class="AutoConfig") + package_import + _CLASS.format(
        name=config_name
    )
    modeling_source = (
        _HEADER.format(install=INSTALL, auto_class="AutoModel")
        + f"\nfrom .{CONFIG_MODULE} import {config_name}, package_class\n"
        + "".join(_MODEL_CLASS.format(name=name, config_name=config_name) for name in sorted(model_names))
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for module, source in ((CONFIG_MODULE, config_source), (MODELING_MODULE, modeling_source)):
        path = folder / f"{module}.py"
        path.write_text(source)
        written.append(path)
    return written


def upload_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                  commit_message: str = "Upload hf-efficient checkpoint") -> str:
    """Create `repo_id` if needed and commit every file of `folder` (config, weights, tokenizer, card, remote code)
    in one commit, the way transformers' `push_to_hub` does. Returns the repo id the Hub resolved."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    folder = Path(folder)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
    return repo_id
