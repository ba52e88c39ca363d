"""Image datasets on disk (Omniglot, Mini-ImageNet): finding, checking, decoding once, caching.

A dataset folder is read in its usual layout, checked, and its images decoded ONCE into a uint8
array of shape (n_images, channels, side, side), grouped by class, that is written to a cache
directory. Later loads of an unchanged folder map that array from the cache, so sampling a
meta-batch is array indexing. The cache entry is keyed by the folder's contents (every image
file's path relative to the folder, size and modification time, and the split files), so
adding, removing or touching a file builds a new entry; entries are written atomically (a
temporary directory renamed into place), so concurrent runs never see half an entry.

Where the folder is (:func:`resolve_root`): the family parameter ``root`` (``-P root=PATH``)
when given, else ``$GABENCH_DATA/omniglot`` or ``$GABENCH_DATA/mini-imagenet``. Where the cache
is (:func:`cache_dir`): ``$GABENCH_CACHE``, else ``$XDG_CACHE_HOME/gabench``, else
``~/.cache/gabench``.

Layouts:

- Omniglot, as in the official release (the unzipped ``images_background.zip`` and
  ``images_evaluation.zip`` of github.com/brendenlake/omniglot, ``python/``):
  ``ROOT/images_background/<alphabet>/<character>/*.png`` and
  ``ROOT/images_evaluation/<alphabet>/<character>/*.png`` (either or both). Images are
  converted to grayscale and resized to 28x28 (Lanczos). A class is a character; see
  :func:`omniglot_split` for the meta-train/val/test rule.
- Mini-ImageNet, as in Ravi and Larochelle's split: ``ROOT/images/*.jpg`` plus
  ``ROOT/train.csv``, ``ROOT/val.csv`` and ``ROOT/test.csv``, each with the header
  ``filename,label`` and one image per line. Images are converted to RGB and resized to 84x84
  (Lanczos). A class is a label; the splits must not share a label.

Every problem with a folder raises :class:`DatasetError` (a :class:`~gabench.ConfigError`): one
line naming the path and the problem, raised before any training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gabench._errors import ConfigError, check_choice

#: Environment variable naming a folder with ``omniglot/`` and ``mini-imagenet/`` inside.
DATA_ENV = "GABENCH_DATA"
#: Environment variable naming the cache directory.
CACHE_ENV = "GABENCH_CACHE"
#: The image datasets, each with its folder name under ``$GABENCH_DATA``.
DATASETS: tuple[str, ...] = ("omniglot", "mini-imagenet")
#: Side of the decoded (square) images.
SIDES: dict[str, int] = {"omniglot": 28, "mini-imagenet": 84}
CHANNELS: dict[str, int] = {"omniglot": 1, "mini-imagenet": 3}
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
#: Omniglot's standard split sizes (characters) for the full 1623-character release.
OMNIGLOT_SPLIT: tuple[int, int, int] = (1200, 100, 323)
#: Seed of the fixed shuffle that assigns Omniglot characters to splits.
OMNIGLOT_SPLIT_SEED = 0
OMNIGLOT_SETS: tuple[str, ...] = ("images_background", "images_evaluation")
#: Bumped whenever the decoding changes, so that old cache entries are not reused.
CACHE_VERSION = 1


class DatasetError(ConfigError):
    """A dataset folder is missing, laid out wrongly, has an unreadable image or too few classes.

    The message is one line: ``PATH: PROBLEM``.

    Args:
        path: The file or folder at fault.
        problem: What is wrong, as a phrase.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        self.param, self.value, self.allowed = "root", str(path), problem
        ValueError.__init__(self, f"{path}: {problem}")


# --------------------------------------------------------------------------- locations
def resolve_root(dataset: str, root: str | Path | None = None) -> Path:
    """The folder of ``dataset``: ``root`` when given, else ``$GABENCH_DATA/<dataset>``.

    Args:
        dataset: ``"omniglot"`` or ``"mini-imagenet"``.
        root: The folder given by the user (``-P root=PATH``); empty or None: use the
            environment variable.

    Raises:
        ConfigError: neither is set.
    """
    check_choice("dataset", dataset, DATASETS)
    if root:
        return Path(root).expanduser().absolute()
    env = os.environ.get(DATA_ENV, "")
    if not env:
        raise ConfigError("root", root or "", f"the {dataset} folder: set -P root=PATH or "
                          f"{DATA_ENV}=DIR (a folder with {dataset}/ inside)")
    return (Path(env).expanduser() / dataset).absolute()


def cache_dir() -> Path:
    """``$GABENCH_CACHE``, else ``$XDG_CACHE_HOME/gabench``, else ``~/.cache/gabench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "gabench").absolute()


# --------------------------------------------------------------------------- the loaded data
@dataclass(frozen=True)
class ImageSet:
    """A decoded image dataset, grouped by class.

    Attributes:
        dataset: ``"omniglot"`` or ``"mini-imagenet"``.
        root: The folder it was read from.
        images: uint8 array of shape (n_images, channels, side, side); the images of class c
            are ``images[offsets[c]:offsets[c + 1]]``. Memory-mapped from the cache.
        class_names: Name of every class (Omniglot: ``set/alphabet/character``; Mini-ImageNet:
            the label), shape (n_classes,).
        offsets: int64 array of shape (n_classes + 1,).
        splits: Split name -> int64 array of the class indices of that split (disjoint).
        cache_path: The cache entry.
        from_cache: Whether this load found the entry (False: it was built now).
    """

    dataset: str
    root: Path
    images: np.ndarray
    class_names: tuple[str, ...]
    offsets: np.ndarray
    splits: dict[str, np.ndarray]
    cache_path: Path
    from_cache: bool

    @property
    def counts(self) -> np.ndarray:
        """Images per class, shape (n_classes,)."""
        return np.diff(self.offsets)

    def split_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"classes": n, "images": n}}`` (classes as stored: Omniglot characters)."""
        counts = self.counts
        return {s: {"classes": int(len(c)), "images": int(counts[c].sum())}
                for s, c in self.splits.items()}


def check_dataset(dataset: str, root: str | Path | None = None, *,
                  ways: int | None = None) -> dict[str, dict[str, int]]:
    """Check a dataset folder (decoding it into the cache if needed) and count it per split.

    Args:
        dataset: ``"omniglot"`` or ``"mini-imagenet"``.
        root: The folder (None or empty: ``$GABENCH_DATA/<dataset>``).
        ways: When given, every split must have at least this many classes (Omniglot: four
            rotations of each character count as four classes).

    Returns:
        ``{split: counts}`` for ``train``, ``val``, ``test``; counts has ``classes`` (the
        classes tasks draw from) and ``images`` (files on disk), and for Omniglot also
        ``characters``.

    Raises:
        DatasetError: a missing folder, a wrong layout, an unreadable image, or a split with
            fewer than ``ways`` classes; one line naming the path and the problem.
    """
    data = load_dataset(dataset, root)
    out = data.split_counts()
    if dataset == "omniglot":
        out = {s: {"characters": c["classes"], "classes": 4 * c["classes"], "images": c["images"]}
               for s, c in out.items()}
    if ways is not None:
        check_ways(data, ways, 4 if dataset == "omniglot" else 1)
    return out


def check_ways(data: ImageSet, ways: int, per_class: int = 1) -> None:
    """Raise :class:`DatasetError` when a split has fewer than ``ways`` classes.

    Args:
        data: The dataset.
        ways: Classes per task.
        per_class: Task classes per stored class (4 for Omniglot's rotations).
    """
    for split, classes in data.splits.items():
        n = len(classes) * per_class
        if n < ways:
            what = f" ({len(classes)} characters x {per_class} rotations)" if per_class > 1 else ""
            raise DatasetError(data.root, f"too few classes for ways={ways}: the {split} split "
                               f"has {n}{what}")


_LOADED: dict[tuple[str, str], ImageSet] = {}
_LISTINGS: dict[tuple[str, str], tuple[_Listing, str]] = {}


def load_dataset(dataset: str, root: str | Path | None = None, *,
                 cache: str | Path | None = None) -> ImageSet:
    """Read ``dataset`` from its folder: from the cache when the folder is unchanged.

    The folder is listed (and the list checked) once per process (listing Omniglot's 32460
    files takes about a second, and a study builds its family once per planned run); its images
    are decoded only when the cache has no entry for the listing. Within one process the mapped
    arrays are shared. :func:`clear_loaded` forgets both.

    Args:
        dataset: ``"omniglot"`` or ``"mini-imagenet"``.
        root: The folder (None or empty: ``$GABENCH_DATA/<dataset>``).
        cache: The cache directory (default :func:`cache_dir`).

    Raises:
        DatasetError: see :func:`check_dataset`.
    """
    folder = resolve_root(dataset, root)
    listed = (dataset, str(folder))
    if listed not in _LISTINGS:
        listing = _LISTERS[dataset](folder)
        _LISTINGS[listed] = (listing, listing.key(dataset))
    listing, key = _LISTINGS[listed]
    base = Path(cache).absolute() if cache is not None else cache_dir()
    entry = base / f"{dataset}-{key[:24]}"
    memo = (str(entry), key)
    if memo in _LOADED:
        return _LOADED[memo]
    from_cache = (entry / "meta.json").is_file()
    if not from_cache:
        _build_entry(dataset, listing, base, entry, key)
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="r")
    names = tuple(meta["classes"])
    offsets = np.asarray(meta["offsets"], dtype=np.int64)
    if dataset == "omniglot":
        splits = omniglot_split(names)
    else:
        split_of = meta["splits"]
        splits = {s: np.array([i for i, n in enumerate(split_of) if n == s], dtype=np.int64)
                  for s in SPLIT_NAMES}
    data = ImageSet(dataset, folder, images, names, offsets, splits, entry, from_cache)
    _LOADED[memo] = data
    return data


def clear_loaded() -> None:
    """Forget the folders listed and the datasets mapped in this process (the next load lists
    the folder again and maps its cache entry: what a new process does)."""
    _LOADED.clear()
    _LISTINGS.clear()


def omniglot_split(characters: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """Assign Omniglot characters to meta-train, meta-val and meta-test.

    The rule: sort the characters by ``set/alphabet/character`` (both sets pooled, as in MAML's
    code), shuffle them with ``numpy.random.default_rng(0).permutation``, and take the first
    ``round(n * 1200 / 1623)`` for meta-train, the next ``round(n * 100 / 1623)`` for meta-val
    and the rest for meta-test (halves round up). On the full release (n = 1623) that is
    exactly 1200, 100 and 323 characters; a smaller folder (as in the tests) is split in the
    same proportions.

    Args:
        characters: Class names ``set/alphabet/character``, in any order.

    Returns:
        Split name -> int64 array of indices into ``characters``.

    Raises:
        ValueError: some split would be empty (fewer than 9 characters).
    """
    n = len(characters)
    total = sum(OMNIGLOT_SPLIT)
    n_train = (n * OMNIGLOT_SPLIT[0] * 2 + total) // (2 * total)
    n_val = (n * OMNIGLOT_SPLIT[1] * 2 + total) // (2 * total)
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise ValueError(f"{n} characters cannot be split in the proportions 1200:100:323")
    order = np.argsort(np.array(characters, dtype=object), kind="stable")
    perm = order[np.random.default_rng(OMNIGLOT_SPLIT_SEED).permutation(n)]
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


# --------------------------------------------------------------------------- listing
@dataclass
class _Listing:
    """What a folder holds: classes with their files, the split of each class, and the stats
    that key the cache."""

    root: Path
    classes: list[tuple[str, list[Path]]]
    split_of: list[str] | None  # per class (Mini-ImageNet); None: computed (Omniglot)
    stats: list[tuple[str, int, int]]  # (relative path, size, mtime_ns) of every file read

    def key(self, dataset: str) -> str:
        payload = json.dumps([CACHE_VERSION, dataset, SIDES[dataset], self.split_of,
                              [(n, [str(f.relative_to(self.root)) for f in fs]) for n, fs in self.classes],
                              self.stats], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


def _check_folder(path: Path, what: str = "folder") -> None:
    if not path.exists():
        raise DatasetError(path, f"no such {what}")
    if not path.is_dir():
        raise DatasetError(path, f"not a folder; expected the {what}")


def _subdirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _list_omniglot(root: Path) -> _Listing:
    layout = "expected ROOT/images_background/<alphabet>/<character>/*.png (Omniglot's release)"
    _check_folder(root, "Omniglot folder")
    sets = [s for s in OMNIGLOT_SETS if (root / s).is_dir()]
    if not sets:
        raise DatasetError(root, "wrong layout: no images_background/ or images_evaluation/ inside; "
                           + layout)
    classes: list[tuple[str, list[Path]]] = []
    stats: list[tuple[str, int, int]] = []
    for s in sets:
        alphabets = _subdirs(root / s)
        if not alphabets:
            raise DatasetError(root / s, f"wrong layout: no alphabet folders inside; {layout}")
        for alphabet in alphabets:
            characters = _subdirs(Path(alphabet.path))
            if not characters:
                raise DatasetError(alphabet.path, f"wrong layout: no character folders inside; {layout}")
            for char in characters:
                with os.scandir(char.path) as it:
                    pngs = sorted((e for e in it if e.name.lower().endswith(".png")
                                   and not e.name.startswith(".") and e.is_file()), key=lambda e: e.name)
                if not pngs:
                    raise DatasetError(char.path, f"wrong layout: no .png images; {layout}")
                files = []
                for e in pngs:
                    st = e.stat()
                    files.append(Path(e.path))
                    stats.append((f"{s}/{alphabet.name}/{char.name}/{e.name}", st.st_size, st.st_mtime_ns))
                classes.append((f"{s}/{alphabet.name}/{char.name}", files))
    try:
        omniglot_split([n for n, _ in classes])
    except ValueError as exc:
        raise DatasetError(root, f"too few characters: {exc}") from None
    return _Listing(root, classes, None, stats)


def _list_mini_imagenet(root: Path) -> _Listing:
    layout = "expected ROOT/images/*.jpg and ROOT/train.csv, val.csv, test.csv with header filename,label"
    _check_folder(root, "Mini-ImageNet folder")
    images = root / "images"
    if not images.is_dir():
        raise DatasetError(root, f"wrong layout: no images/ folder inside; {layout}")
    by_label: dict[str, list[Path]] = {}
    split_of_label: dict[str, str] = {}
    stats: list[tuple[str, int, int]] = []
    for split in SPLIT_NAMES:
        path = root / f"{split}.csv"
        if not path.is_file():
            raise DatasetError(root, f"wrong layout: no {split}.csv inside; {layout}")
        st = path.stat()
        stats.append((path.name, st.st_size, st.st_mtime_ns))
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(path, f"cannot be read as CSV ({_one_line(exc)})") from None
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise DatasetError(path, f"wrong header {rows[0] if rows else '(empty file)'!r}; {layout}")
        if len(rows) == 1:
            raise DatasetError(path, "no images listed")
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DatasetError(path, f"line {line}: expected FILENAME,LABEL, got {','.join(row)!r}")
            name, label = row[0].strip(), row[1].strip()
            if split_of_label.setdefault(label, split) != split:
                raise DatasetError(path, f"line {line}: class {label!r} is also in "
                                   f"{split_of_label[label]}.csv; the splits must not share classes")
            file = images / name
            try:
                fst = file.stat()
            except OSError:
                raise DatasetError(file, f"missing (listed in {path.name} line {line})") from None
            stats.append((f"images/{name}", fst.st_size, fst.st_mtime_ns))
            by_label.setdefault(label, []).append(file)
    labels = sorted(by_label, key=lambda lab: (SPLIT_NAMES.index(split_of_label[lab]), lab))
    return _Listing(root, [(lab, by_label[lab]) for lab in labels],
                    [split_of_label[lab] for lab in labels], stats)


_LISTERS: dict[str, Callable[[Path], _Listing]] = {
    "omniglot": _list_omniglot, "mini-imagenet": _list_mini_imagenet,
}


# --------------------------------------------------------------------------- decoding and cache
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_image(path: Path, dataset: str) -> np.ndarray:
    """One image as uint8 of shape (channels, side, side): grayscale (Omniglot) or RGB, resized
    with Lanczos filtering.

    Raises:
        DatasetError: the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    side = SIDES[dataset]
    mode = "L" if CHANNELS[dataset] == 1 else "RGB"
    try:
        with Image.open(path) as im:
            im.load()
            out = np.asarray(im.convert(mode).resize((side, side), Image.Resampling.LANCZOS), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(path, f"unreadable image ({_one_line(exc)})") from None
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def _build_entry(dataset: str, listing: _Listing, base: Path, entry: Path, key: str) -> None:
    files = [f for _, fs in listing.classes for f in fs]
    side, channels = SIDES[dataset], CHANNELS[dataset]
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise DatasetError(base, f"cannot create the cache directory ({_one_line(exc)}); set "
                           f"{CACHE_ENV} to a writable folder") from None
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(files), channels, side, side))
        pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))  # Pillow releases the GIL while decoding
        try:
            bar = tqdm(total=len(files), desc=f"decoding {dataset} into {base}", unit="img",
                       disable=None, file=sys.stderr, leave=False, mininterval=1.0)
            for i, img in enumerate(pool.map(lambda f: decode_image(f, dataset), files)):
                images[i] = img
                bar.update(1)
            bar.close()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a bad image stops the others at once
        images.flush()
        del images
        counts = [len(fs) for _, fs in listing.classes]
        meta: dict[str, Any] = {
            "version": CACHE_VERSION, "dataset": dataset, "key": key, "root": str(listing.root),
            "classes": [n for n, _ in listing.classes],
            "offsets": np.concatenate([[0], np.cumsum(counts)]).tolist(),
            "splits": listing.split_of,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_entries(base, dataset, listing.root, entry)


def _remove_stale_entries(base: Path, dataset: str, root: Path, keep: Path) -> None:
    """Delete this folder's older cache entries (built from contents that have since changed)."""
    for other in base.glob(f"{dataset}-*"):
        if other == keep or not (other / "meta.json").is_file():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            continue  # being removed by another process, or not ours: leave it
        if meta.get("root") == str(root):
            shutil.rmtree(other, ignore_errors=True)


# --------------------------------------------------------------------------- synthetic data
def write_synthetic_omniglot(root: str | Path, characters: int = 30, images: int = 20,
                             alphabets: int = 3, seed: int = 0, side: int = 105) -> Path:
    """Write a small Omniglot-like folder in the official layout (for tests and benchmarks).

    Each character is a few random strokes; its images are that drawing shifted by a few pixels
    with pixel noise, saved as 1-bit PNGs (black strokes on white, like the release). The
    characters are spread over ``alphabets`` alphabets in ``images_background`` and
    ``images_evaluation``.

    Args:
        root: The folder to create (ROOT of the layout).
        characters: Number of characters in all.
        images: Images per character.
        alphabets: Number of alphabets.
        seed: Seed of the drawings.
        side: Image side in pixels (105 in the release).

    Returns:
        ``root`` as a Path.
    """
    from PIL import Image, ImageDraw

    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(characters):
        a = c % alphabets
        folder = root / OMNIGLOT_SETS[a % 2] / f"Alphabet_{a:02d}" / f"character{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        strokes = rng.integers(side // 6, side - side // 6, size=(int(rng.integers(2, 5)), 4))
        for i in range(images):
            im = Image.new("L", (side, side), 255)
            draw = ImageDraw.Draw(im)
            dx, dy = rng.integers(-4, 5, size=2)
            for x0, y0, x1, y1 in strokes:
                draw.line([(x0 + dx, y0 + dy), (x1 + dx, y1 + dy)], fill=0, width=6)
            px = np.asarray(im).copy()
            px[rng.random(px.shape) < 0.01] = 0
            Image.fromarray(px).convert("1").save(folder / f"{c:04d}_{i + 1:02d}.png")
    return root


def write_synthetic_mini_imagenet(root: str | Path, classes: tuple[int, int, int] = (8, 5, 5),
                                  images: int = 20, seed: int = 0,
                                  size: tuple[int, int] = (100, 90)) -> Path:
    """Write a small Mini-ImageNet-like folder in Ravi and Larochelle's layout (for tests).

    Each class has a random colour and stripe direction; its images add pixel noise. Images are
    JPEGs of ``size`` (not 84x84, so that the resizing is exercised).

    Args:
        root: The folder to create.
        classes: Classes in train, val and test.
        images: Images per class.
        seed: Seed of the images.
        size: (width, height) of the JPEGs.

    Returns:
        ``root`` as a Path.
    """
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    label = 0
    for split, n_classes in zip(SPLIT_NAMES, classes, strict=True):
        lines = ["filename,label"]
        for _ in range(n_classes):
            wnid = f"n{label:08d}"
            colour = rng.integers(0, 256, size=3)
            angle = rng.uniform(0, np.pi)
            stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 4.0) > 0)[..., None]
            for i in range(images):
                px = np.where(stripes, colour, 255 - colour) + rng.normal(0, 20, size=(h, w, 3))
                name = f"{wnid}{i:08d}.jpg"
                Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / "images" / name)
                lines.append(f"{name},{wnid}")
            label += 1
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root
