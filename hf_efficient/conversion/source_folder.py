"""A local source folder, read safely: safetensors weights only (never a pickle), and nothing the conversion reads or
copies into the output lies outside the folder (no `..` module paths, no symbolic links leading out)."""

import json
import shutil
from pathlib import Path

from .families import ConversionError

SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_source_folder(folder: Path, gguf_file: str | None = None) -> None:
    """Refuse, before anything is loaded: weights only as pickles, a symbolic link anywhere in the folder that leads
    outside it (the conversion reads the folder's files and copies its sentence-transformers modules into the output),
    and a modules.json path leading out of the folder."""
    check_links(folder)
    check_weights_format(folder, gguf_file)
    sentence_transformers_modules(folder)


def check_weights_format(folder: Path, gguf_file: str | None) -> None:
    if gguf_file is not None or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    found = f"only {pickles}, pickle files that hf-efficient never loads" if pickles else "no weights file"
    raise ConversionError(f"{folder} has no safetensors weights ({found}). Give a folder (or a Hub id) with "
                          "model.safetensors: transformers' save_pretrained writes it.")


def allowed_roots(folder: Path) -> list[Path]:
    """The folder, and for a Hugging Face cache snapshot (`models--org--name/snapshots/<rev>`, whose files are links
    into the repo's `blobs`) those blobs too."""
    root = folder.resolve()
    blobs = root.parent.parent / "blobs"
    return [root, blobs] if root.parent.name == "snapshots" and blobs.is_dir() else [root]


def check_links(folder: Path) -> None:
    roots = allowed_roots(folder)
    for path in folder.rglob("*"):  # links to folders are checked, not followed
        if not path.is_symlink():
            continue
        target = path.resolve()
        if not any(target == root or root in target.parents for root in roots):
            raise ConversionError(
                f"{path} is a symbolic link to {target}, outside the source folder {folder}: the conversion reads the "
                "source's files and copies its module folders into the output, so links leading out are refused. "
                "Copy the file into the source folder instead."
            )


def sentence_transformers_modules(folder: Path) -> list[Path]:
    """The module subfolders a sentence-transformers folder's modules.json names (missing ones skipped; the
    transformer module at the folder itself, path "", is the model). A path leading out of the folder, or naming the
    folder itself, is refused."""
    listing = folder / "modules.json"
    if not listing.is_file():
        return []
    try:
        modules = json.loads(listing.read_text())
        paths = [module.get("path") or "" for module in modules]
    except (ValueError, AttributeError, TypeError) as error:
        raise ConversionError(f"{listing} is not a sentence-transformers module list: {error}") from error
    root = folder.resolve()
    found = []
    for path in paths:
        if not path:
            continue
        resolved = (folder / path).resolve()
        if Path(path).is_absolute() or root not in resolved.parents:
            raise ConversionError(
                f"{listing} names module path {path!r}, which leads outside the source folder {folder} (or is the "
                "folder itself): module paths are subfolders of the source, such as '1_Pooling'."
            )
        if resolved.is_dir():
            found.append(folder / path)
    return found


def copy_sentence_transformers_files(folder: Path, out: Path, max_length: int) -> None:
    """Keep a sentence-transformers folder usable as one (pooling modules, max_seq_length raised); what is copied was
    checked by check_source_folder."""
    if not (folder / "modules.json").is_file():
        return
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, out / name)
    for module in sentence_transformers_modules(folder):
        shutil.copytree(module, out / module.relative_to(folder), dirs_exist_ok=True)
    settings = out / "sentence_bert_config.json"
    if settings.exists():
        values = json.loads(settings.read_text())
        values["max_seq_length"] = max_length
        settings.write_text(json.dumps(values, indent=2))
