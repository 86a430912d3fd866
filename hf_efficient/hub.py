"""Hub-ready checkpoint folders: they load with `trust_remote_code=True` where only torch and transformers are
installed, and say which hf-efficient wrote them.

Every save of a package model is Hub-ready: `EfficientConfig.save_pretrained` sets the config's `auto_map`
(AutoConfig, AutoModel and one AutoModelFor* per head the config can build) and writes the variant's bundle next to
the weights, `configuration_<variant>.py` and `modeling_<variant>.py`: the package's own code for the variant,
inlined by hf_efficient.bundle (the same text as modeling/<variant>/ of the source tree). The `auto_map` comes from
the registry only: one a config arrives with is replaced, never copied. A model loaded from such a folder as remote
code saves the same files again (transformers copies the files of classes it loaded as remote code).

Where hf_efficient is imported, the Auto classes use the plugin's own classes, with or without
`trust_remote_code=True` (transformers prefers a model type registered in the process to a folder's code), whichever
version wrote the folder. The card says which version did (`write_card`, also on `push_to_hub`).
"""

import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData

from .bundle import bundle

INSTALL = "pip install hf-efficient"
# what hf-efficient wrote before bundles: two files that import the installed package (removed on the next save)
LEGACY_FILES = ("configuration_efficient.py", "modeling_efficient.py")
LEGACY_MARK = '"""Remote code of an hf-efficient checkpoint, written by hf_efficient.hub'
VERSION_LINE = re.compile(r"^Written by hf-efficient \S+ \(.*$", flags=re.MULTILINE)

CARD = """---
{card_data}
---

# {name}

An hf-efficient **{model_type}** model{architecture}.

{version_line}

## Use

{use}
"""

USE = """With the plugin installed (`{install}`), import it and load the folder like any model; the plugin's own
classes (and its fast attention paths) are used:

```python
import hf_efficient  # registers the efficient_* model types with the Auto classes
from transformers import {auto_class}

model = {auto_class}.from_pretrained("{path}")
```

Without the plugin, transformers runs the folder's own code, which needs only torch and transformers:

```python
from transformers import {auto_class}

model = {auto_class}.from_pretrained("{path}", trust_remote_code=True)
```

The same works for the `AutoModelFor*` class of each task head the folder's `auto_map` lists."""


def buildable_heads(config) -> dict[str, type]:
    """The variant's heads this config can build: a causal model has no masked-LM head and no image-classification
    head (an encoder's, e.g. Axial's), an encoder no causal-LM head."""
    from .auto import VARIANTS

    refused = ("masked_lm", "image_classification") if config.is_causal else ("causal_lm",)
    return {head: cls for head, cls in VARIANTS[config.model_type].heads.items() if head not in refused}


def bundle_auto_map(config) -> dict[str, str]:
    """The `auto_map` of a config: AutoConfig, AutoModel and one AutoModelFor* per head it can build, each naming a
    class of the variant's bundle (by the registry, never by anything the config carries)."""
    from .auto import AUTO_HEADS, VARIANTS

    variant, files = VARIANTS[config.model_type], bundle(config.model_type)
    auto_map = {
        "AutoConfig": f"{files.config_module}.{variant.config.__name__}",
        "AutoModel": f"{files.modeling_module}.{variant.model.__name__}",
    }
    for head, model_class in buildable_heads(config).items():
        auto_map[AUTO_HEADS[head].__name__] = f"{files.modeling_module}.{model_class.__name__}"
    return auto_map


def write_bundle(folder: str | Path, config) -> list[Path]:
    """Write the bundle of the config's variant into `folder`; remove the remote-code files versions before bundles
    wrote (they would import the installed package). Returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in LEGACY_FILES:
        legacy = folder / name
        if legacy.is_file() and legacy.read_text().startswith(LEGACY_MARK):
            legacy.unlink()
    written = []
    for name, text in bundle(config.model_type).files.items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


def make_hub_ready(folder: str | Path, config) -> None:
    """The bundle of the config's variant and the card's version line, in `folder`."""
    write_bundle(folder, config)
    write_card(folder, config)


def version_line(config) -> str:
    """The card's line saying which plugin version wrote the folder's code."""
    from . import __version__

    files = bundle(config.model_type)
    return (f"Written by hf-efficient {__version__} (its code: `{files.config_module}.py` and "
            f"`{files.modeling_module}.py`, self-contained, need only torch and transformers).")


def use_text(config, path: str) -> str:
    """How to load the folder, with and without the plugin (for the cards)."""
    from .auto import AUTO_HEADS, VARIANTS

    architecture = (config.architectures or [None])[0]
    auto_class = "AutoModel"
    for head, cls in VARIANTS[config.model_type].heads.items():
        if cls.__name__ == architecture:
            auto_class = AUTO_HEADS[head].__name__
    return USE.format(install=INSTALL, auto_class=auto_class, path=path)


def write_card(folder: str | Path, config) -> None:
    """The folder's README.md says which hf-efficient wrote it: a short card when it has none, else its version line
    replaced (or added, for a card of the user's own)."""
    path = Path(folder) / "README.md"
    line = version_line(config)
    if path.is_file():
        text = path.read_text()
        updated, count = VERSION_LINE.subn(line.replace("\\", "\\\\"), text)
        path.write_text(updated if count else text.rstrip("\n") + f"\n\n{line}\n")
        return
    data = ModelCardData(library_name="transformers", tags=["hf-efficient", config.model_type])
    architecture = f" (`{config.architectures[0]}`)" if config.architectures else ""
    ModelCard(CARD.format(card_data=data.to_yaml(), name=Path(folder).resolve().name, model_type=config.model_type,
                          architecture=architecture, version_line=line,
                          use=use_text(config, str(folder)))).save(path)


def upload_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                  commit_message: str = "Upload hf-efficient checkpoint") -> str:
    """Create `repo_id` if needed and commit every file of `folder` (config, weights, tokenizer, card, bundle) in one
    commit, the way transformers' `push_to_hub` does. Returns the repo id the Hub resolved."""
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
