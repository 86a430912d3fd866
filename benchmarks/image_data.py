"""The small image sets of the image-density benchmark, from images scikit-learn ships (no download).

  digits  scikit-learn's 8x8 handwritten digits: 1,797 grayscale images of 17 levels (0..16), 10 classes. A fixed
          seed's permutation holds out 297 images; the other 1,500 train.
  crops   CROP x CROP RGB crops (256 levels, CROP = 32 by default) of scikit-learn's two sample photos (china.jpg and
          flower.jpg, 427 x 640): training crops start every 8 pixels inside columns [0, 480) of each photo; held-out
          crops tile columns [480, 640) without overlap, so no held-out pixel is seen in training. No classes.

Images are 8-bit intensities, (N, H, W, C) uint8, the input of `ImageSet.processor()` (an EfficientImageProcessor
with the set's num_levels): a digit's level l is stored as the middle value of level l's bin, which the processor
maps back to l exactly.

scikit-learn is imported only to build a set. With a cache folder (`cache=` / `--cache DIR`) a set is read from
DIR/<file>.npz when it is there and written there when it is built, so a machine without scikit-learn (the GPU
machine) reads the files written here:

    python benchmarks/image_data.py --write benchmarks/.data/images        # both sets, needs scikit-learn
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_efficient.data.image_processing import EfficientImageProcessor

NAMES = ("digits", "crops")
VERSION = 1  # of the splits below; a cache file of another version is refused
DIGITS_SEED, DIGITS_HELD_OUT = 0, 297
CROP_STRIDE, HELD_OUT_COLUMN = 8, 480


@dataclass
class ImageSet:
    """Train and held-out images (N, H, W, C) uint8 with their labels (N,) int64 (-1 where the set has none)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_levels: int
    num_classes: int

    @property
    def image_size(self) -> list[int]:
        return list(self.train_images.shape[1:3])

    @property
    def num_channels(self) -> int:
        return self.train_images.shape[3]

    @property
    def tokens(self) -> int:
        """Sub-pixels per image (input_ids are one longer: the bos)."""
        return int(np.prod(self.train_images.shape[1:]))

    def processor(self) -> EfficientImageProcessor:
        return EfficientImageProcessor(num_levels=self.num_levels, num_channels=self.num_channels,
                                       image_size=self.image_size)


def file_name(name: str, crop_size: int = 32) -> str:
    return "digits.npz" if name == "digits" else f"crops{crop_size}.npz"


def build(name: str, crop_size: int = 32) -> ImageSet:
    """The set made from scikit-learn's bundled files."""
    try:
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError as error:
        raise ImportError(f"building the {name} set needs scikit-learn (pip install scikit-learn, or the package's "
                          "'images' extra); without it, read a cache written elsewhere with "
                          "`python benchmarks/image_data.py --write DIR` (cache=DIR / --cache DIR).") from error
    if name == "digits":
        digits = load_digits()
        order = np.random.default_rng(DIGITS_SEED).permutation(len(digits.target))
        held_out, train = order[:DIGITS_HELD_OUT], order[DIGITS_HELD_OUT:]
        processor = EfficientImageProcessor(num_levels=17, num_channels=1)
        images = processor.dequantize(digits.images.astype(np.int64))[..., None]  # (1797, 8, 8, 1)
        labels = digits.target.astype(np.int64)
        return ImageSet(name, images[train], labels[train], images[held_out], labels[held_out], 17, 10)
    if name != "crops":
        raise ValueError(f"no image set {name!r}; the sets are {NAMES}.")
    if not isinstance(crop_size, int) or not 1 <= crop_size <= 160:
        raise ValueError(f"crop_size={crop_size!r}: give an int in [1, 160] (the held-out columns are 160 wide).")
    train, held_out = [], []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each
        height = photo.shape[0]
        train += [photo[r:r + crop_size, c:c + crop_size] for r in range(0, height - crop_size + 1, CROP_STRIDE)
                  for c in range(0, HELD_OUT_COLUMN - crop_size + 1, CROP_STRIDE)]
        held_out += [photo[r:r + crop_size, c:c + crop_size] for r in range(0, height - crop_size + 1, crop_size)
                     for c in range(HELD_OUT_COLUMN, photo.shape[1] - crop_size + 1, crop_size)]
    none = np.full(len(train), -1, dtype=np.int64)
    return ImageSet(name, np.stack(train), none, np.stack(held_out), np.full(len(held_out), -1, dtype=np.int64),
                    256, 0)


def save(image_set: ImageSet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": VERSION, "name": image_set.name, "num_levels": image_set.num_levels,
            "num_classes": image_set.num_classes}
    np.savez_compressed(path, train_images=image_set.train_images, train_labels=image_set.train_labels,
                        test_images=image_set.test_images, test_labels=image_set.test_labels,
                        meta=np.array(json.dumps(meta)))


def read(path: Path) -> ImageSet:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("version") != VERSION:
            raise ValueError(f"{path} was written by another version of image_data.py ({meta.get('version')}, this "
                             f"is {VERSION}): write it again with `python benchmarks/image_data.py --write DIR`.")
        return ImageSet(meta["name"], data["train_images"], data["train_labels"], data["test_images"],
                        data["test_labels"], meta["num_levels"], meta["num_classes"])


def load(name: str, cache: str | Path | None = None, crop_size: int = 32) -> ImageSet:
    """The set `name` (digits or crops): from cache/<file>.npz when there, else built (and written there)."""
    if name not in NAMES:
        raise ValueError(f"no image set {name!r}; the sets are {NAMES}.")
    path = Path(cache) / file_name(name, crop_size) if cache is not None else None
    if path is not None and path.is_file():
        return read(path)
    image_set = build(name, crop_size)
    if path is not None:
        save(image_set, path)
    return image_set


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", required=True, metavar="DIR", help="folder to write the .npz files to")
    parser.add_argument("--sets", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--crop-size", type=int, default=32, help="side of the photo crops (default: 32)")
    args = parser.parse_args(argv)
    for name in args.sets:
        path = Path(args.write) / file_name(name, args.crop_size)
        try:
            image_set = build(name, args.crop_size)
        except (ImportError, ValueError) as error:
            parser.error(str(error))
        save(image_set, path)
        print(f"{path}: {len(image_set.train_images)} train and {len(image_set.test_images)} held-out images of "
              f"{image_set.image_size + [image_set.num_channels]}, {image_set.num_levels} levels, "
              f"{image_set.num_classes} classes")


if __name__ == "__main__":
    main()
