"""Data: MNIST from its IDX files, and the canvases the method trains on.

Regional MNIST (the poster's, in this project's choice of sizes): each 28x28 digit pasted at a
uniformly random integer offset on a blank canvas (56x56 by default), the offset
kept for oracle crops. MNIST: the digit centred on a 36x36 canvas. Whole splits
live in memory as uint8 tensors (N, 1, C, C); batches are index slices of them.
"""
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request

import numpy as np
import torch

DIGIT = 28  # MNIST digits are 28x28
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/")
FILES = {  # (split, kind) -> (file stem, MD5 of the mirrors' .gz file)
    ("train", "images"): ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
}


def write_atomic(path, write):
    """Call write(file) on a temporary file beside path, then rename it over path.

    A crash or kill at any moment leaves either the old file or the new one, never half.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_idx(path):
    """An IDX file of unsigned bytes (gzipped or not) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:  # a bad or truncated gzip stream
        raise ValueError(f"{path}: corrupt IDX file ({e})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX file (header cut short)")
    dims = [int(n) for n in np.frombuffer(raw, ">u4", raw[3], 4)]
    if len(raw) != header + int(np.prod(dims)):
        raise ValueError(f"{path}: truncated or corrupt IDX file: dimensions {dims} "
                         f"need {header + int(np.prod(dims))} bytes, found {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def download(url, path, md5, timeout=10.0):
    """Fetch url into path atomically, with progress; refuse a file whose MD5 differs."""
    def write(fh):
        digest = hashlib.md5()
        done = 0  # bytes so far
        with urllib.request.urlopen(url, timeout=timeout) as r:
            total = int(r.headers.get("Content-Length") or 0)
            while chunk := r.read(1 << 16):
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                percent = done * 100 // max(total, 1)
                print(f"\rdownloading {url} {percent}%", end="", file=sys.stderr)
        print(file=sys.stderr)
        if total and done != total:
            raise OSError(f"{url}: connection dropped after {done} of {total} bytes")
        if digest.hexdigest() != md5:
            raise OSError(f"{url}: MD5 {digest.hexdigest()} is not the expected {md5}")
    write_atomic(path, write)


def _find_or_fetch(data_dir, stem, md5, mirrors, timeout):
    """(path of stem, .gz or raw, in data_dir, fetched if missing), or (None, why not)."""
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name), None
    path = os.path.join(data_dir, stem + ".gz")
    error = OSError("no mirror given")  # the reason returned where mirrors is empty
    for mirror in mirrors:
        try:
            os.makedirs(data_dir, exist_ok=True)
            download(mirror + stem + ".gz", path, md5, timeout)
            return path, None
        except OSError as e:  # URLError, timeouts and MD5 mismatches are all OSErrors
            error = e
    return None, error


def load_mnist(data_dir, split, mirrors=MIRRORS, timeout=10.0):
    """(images (N, 28, 28) uint8, labels (N,) int64) of MNIST's 'train' or 'test' split.

    Reads the IDX files in data_dir and downloads them where missing; refuses, in one line,
    where neither is possible.
    """
    paths = []
    for kind in ("images", "labels"):
        path, error = _find_or_fetch(data_dir, *FILES[split, kind], mirrors, timeout)
        if path is None:
            raise ValueError(f"{FILES[split, kind][0]} is not in {data_dir} and could not be "
                             f"downloaded ({error}): put the four MNIST IDX files there")
        paths.append(path)
    images = read_idx(paths[0])
    labels = read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT):
        raise ValueError(f"{paths[0]}: expected (N, 28, 28) images, found {images.shape}")
    if labels.shape != images.shape[:1] or labels.max(initial=0) > 9:
        raise ValueError(f"{paths[1]}: expected {len(images)} labels 0..9, found {labels.shape}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def check_memory(canvas, batch_size, device, n_images=60000, crop=28, stride=4):
    """Refuse a run whose train canvases, step activations and (K, K) numerators exceed the
    device's memory. 1,500 bytes per canvas pixel of the batch is twice the measured cost: a
    56x56 ours step's process peaked at 0.44 GiB at B = 16, 0.64 to 0.9 GiB at B = 256
    (bench.py)."""
    K = ((canvas - crop) // stride + 1) ** 2
    need = n_images * canvas**2 + batch_size * (1500 * canvas**2 + 12 * K * K)
    if device != "cpu" and torch.cuda.is_available():
        have = torch.cuda.mem_get_info()[1]
    elif hasattr(os, "sysconf"):  # POSIX
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:  # Windows has no sysconf: the run goes on unchecked
        return
    if need > have:
        raise ValueError(f"with --batch-size {batch_size} a run needs about {need / 2**30:.1f} "
                         f"GiB, this machine has {have / 2**30:.1f} GiB")


def make_canvases(images, dataset, canvas, seed):
    """Paste (N, 28, 28) digits on blank canvases: (N, 1, C, C) uint8 and (N, 2) offsets.

    regional: a uniformly random offset per digit, drawn from seed; mnist: centred.
    """
    if canvas < DIGIT:
        raise ValueError(f"canvas {canvas} is smaller than the {DIGIT}x{DIGIT} digit")
    N = len(images)
    if dataset == "regional":
        g = torch.Generator().manual_seed(seed)
        offsets = torch.randint(0, canvas - DIGIT + 1, (N, 2), generator=g)  # (N, 2) row, col
    elif dataset == "mnist":
        offsets = torch.full((N, 2), (canvas - DIGIT) // 2)  # (N, 2)
    else:
        raise ValueError(f"unknown dataset {dataset!r}: expected 'regional' or 'mnist'")
    rows = offsets[:, :1] + torch.arange(DIGIT)  # (N, 28)
    cols = offsets[:, 1:] + torch.arange(DIGIT)  # (N, 28)
    x = torch.zeros(N, canvas, canvas, dtype=torch.uint8)  # (N, C, C)
    x[torch.arange(N)[:, None, None], rows[:, :, None], cols[:, None, :]] = images
    return x[:, None], offsets


def load_canvases(data_dir, split, dataset, canvas, seed):
    """One split as canvases: (x (N, 1, C, C) uint8, labels (N,), offsets (N, 2)).

    The test split's offsets are drawn from seed + 1, so they differ from train's.
    """
    images, labels = load_mnist(data_dir, split)
    if split == "test":
        seed += 1
    x, offsets = make_canvases(images, dataset, canvas, seed)
    return x, labels, offsets
