"""Hub-ready checkpoint folders: loading with `trust_remote_code=True` without `import hf_efficient`, and uploads.

A Hub-ready config carries an `auto_map` (AutoConfig, AutoModel and one AutoModelFor* per head of the variant)
naming two small files saved next to the weights, configuration_efficient.py and modeling_efficient.py. They import
the installed hf-efficient package and define one-line subclasses of its classes. Subclasses, not re-exports:
transformers marks a class loaded as remote code with `register_for_auto_class` and, when saving, copies the file
that defines it; a re-exported package class would get marked for the whole process, and its own file (relative
imports into the package) would be copied. `EfficientConfig.save_pretrained` writes the two files whenever its
`auto_map` names them, so later saves (fine-tuning checkpoints, `push_to_hub`) stay Hub-ready.
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


def remote_code_auto_map(variant) -> dict[str, str]:
    """The `auto_map` for a variant: AutoConfig, AutoModel and one AutoModelFor* per head it supports."""
    from .auto import AUTO_HEADS

    auto_map = {
        "AutoConfig": f"{CONFIG_MODULE}.{variant.config.__name__}",
        "AutoModel": f"{MODELING_MODULE}.{variant.model.__name__}",
    }
    for head, model_class in variant.heads.items():
        auto_map[AUTO_HEADS[head].__name__] = f"{MODELING_MODULE}.{model_class.__name__}"
    return auto_map


def make_hub_ready(model) -> None:
    """Give the model's config the remote-code `auto_map`; its saves then write the two files as well."""
    from .auto import VARIANTS

    model.config.auto_map = remote_code_auto_map(VARIANTS[model.config.model_type])


def write_remote_code(folder: str | Path, auto_map: dict | None) -> list[Path]:
    """Write configuration_efficient.py and modeling_efficient.py for the classes `auto_map` names.

    Does nothing (returns []) when `auto_map` names neither file: a config without one, or another library's.
    """
    classes = {module: [] for module in (CONFIG_MODULE, MODELING_MODULE)}
    for reference in sorted(value for value in (auto_map or {}).values() if isinstance(value, str)):
        if "--" not in reference:  # "repo--module.Class": code kept in another repo
            module, _, name = reference.partition(".")
            if module in classes and name not in classes[module]:
                classes[module].append(name)
    if not classes[CONFIG_MODULE]:
        return []
    (config_name,) = classes[CONFIG_MODULE]
    package_import = _PACKAGE_IMPORT.format(install=INSTALL)
    config_source = _HEADER.format(install=INSTALL, auto_class="AutoConfig") + package_import + _CLASS.format(
        name=config_name
    )
    modeling_source = (
        _HEADER.format(install=INSTALL, auto_class="AutoModel")
        + f"\nfrom .{CONFIG_MODULE} import {config_name}, package_class\n"
        + "".join(_MODEL_CLASS.format(name=name, config_name=config_name) for name in classes[MODELING_MODULE])
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
