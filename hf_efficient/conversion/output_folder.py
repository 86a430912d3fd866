"""Where a conversion writes: `--out` checked before any work, and written whole into a temporary folder beside it
that replaces `--out` only once complete."""

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging

from .families import ConversionError

logger = logging.get_logger(__name__)


def check_output(out: str | Path, overwrite: bool, source_folder: Path | None = None) -> Path:
    """The resolved output folder, or a ConversionError, before any work and touching nothing: `out` may not be a
    file, a non-empty folder without `overwrite`, the source folder, a folder inside it or one that contains it, nor
    lie where nothing can be written."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConversionError(f"--out {out} is a file: give a folder path.")
    if source_folder is not None:
        source = source_folder.resolve()
        if out == source or source in out.parents or out in source.parents:
            where = "is" if out == source else "is inside" if source in out.parents else "contains"
            raise ConversionError(f"--out {out} {where} the source folder {source}: write the converted model to a "
                                  "folder outside the source.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConversionError(f"{out} exists and is not empty: pass --overwrite to replace it, or another --out.")
    check_writable(out.parent)
    leftovers = sorted(out.parent.glob(f".{out.name}.tmp-*")) + sorted(out.parent.glob(f".{out.name}.old-*"))
    if leftovers:
        logger.warning(f"Left by an interrupted conversion into {out} (safe to delete): {[str(p) for p in leftovers]}")
    return out


def check_writable(folder: Path) -> None:
    """Refuse a folder (or, where it doesn't exist yet, its nearest existing parent) this process can't write in."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise ConversionError(f"--out lies under {existing}, which is a file: give a folder path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConversionError(f"{existing} is read-only or not writable by this user: choose an --out elsewhere.")


@contextmanager
def written_in_place_of(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out` (`.<name>.tmp-<random>`, same filesystem) to write the whole
    output into; once the block ends without error it replaces `out`. The old output survives any failure or kill,
    and no half-written folder ever sits at `out`:

    * an exception (Ctrl-C included) while writing: the temporary folder is deleted; `out` is as it was;
    * killed while writing: `out` is as it was; the temporary folder is left beside it;
    * killed between the two renames of the swap (`out` -> `.<name>.old-<random>`, then temporary -> `out`): `out` is
      missing for that instant; the old output is whole at `.<name>.old-*` and the new one at `.<name>.tmp-*`;
    * killed after the swap, before the old output is deleted: `out` is the new output; `.<name>.old-*` is left.

    The next conversion into `out` warns about anything left (check_output).
    """
    created = [path for path in (out.parent, *out.parent.parents) if not path.exists()]
    temporary = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
    except OSError as error:
        remove_empty(created)
        raise ConversionError(f"Can't write beside {out}: {error.strerror or error}. Choose an --out elsewhere.") \
            from error
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        remove_empty(created)
        raise
    swap_in(temporary, out)


def swap_in(new: Path, out: Path) -> None:
    """Rename the old `out` aside, `new` to `out`, then delete the old one (a new `out` is only renamed)."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    try:
        shutil.rmtree(old)
    except OSError as error:
        logger.warning(f"The new output is in {out}, but the previous one could not be deleted from {old}: {error}")


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for the output (deepest first) when a failed conversion left them empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
