"""Tests of data.py (MNIST files, downloads, canvases, memory) and of what other machines lack;
`pytest test_all.py` runs them."""
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
import torch

import data
import model
from channel import crops_at
from fixtures import fake_mnist, run, write_idx


class Mirror(http.server.BaseHTTPRequestHandler):
    """A local stand-in of an MNIST mirror: 5,000 random bytes and their MD5."""
    body = os.urandom(5000)
    md5 = hashlib.md5(body).hexdigest()

    def do_GET(self):  # /drop: the connection dies after 1,000 of the 5,000 bytes
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[:1000] if self.path == "/drop" else self.body)


def serve(handler):
    """(server, its URL) of handler on a free port of this machine, serving in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_regional_canvases_are_deterministic_and_hold_the_digit():
    images = torch.randint(1, 256, (50, 28, 28), dtype=torch.uint8)
    x, offsets = data.make_canvases(images, "regional", 56, seed=7)
    again, offsets_again = data.make_canvases(images, "regional", 56, seed=7)
    assert torch.equal(x, again) and torch.equal(offsets, offsets_again)
    assert not torch.equal(offsets, data.make_canvases(images, "regional", 56, seed=8)[1])
    assert offsets.min() >= 0 and offsets.max() <= 28 and len(offsets.unique()) > 10
    assert torch.equal(crops_at(x, offsets[:, None])[:, 0], images)  # the oracle crop is the digit
    assert torch.equal(x.sum((1, 2, 3)), images.sum((1, 2), dtype=torch.int64))  # nothing else
    centred, mnist_offsets = data.make_canvases(images, "mnist", 36, seed=7)
    assert (mnist_offsets == 4).all() and torch.equal(centred[:, 0, 4:32, 4:32], images)


def test_idx_round_trip_corrupt_and_missing_files(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    for name in ("a.gz", "b"):  # gzipped and raw
        write_idx(tmp_path / name, array)
        assert np.array_equal(data.read_idx(str(tmp_path / name)), array)
    bad = {"truncated": (tmp_path / "b").read_bytes()[:-10], "text": b"hello world",
           "broken.gz": (tmp_path / "a.gz").read_bytes()[:90]}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        pytest.raises(ValueError, data.read_idx, str(tmp_path / name)).match(str(tmp_path / name))
    images, labels = data.load_mnist(fake_mnist(tmp_path / "mnist"), "test")
    assert images.shape == (48, 28, 28) and labels.shape == (48,)
    with pytest.raises(ValueError, match="could not be downloaded"):  # offline, no files
        data.load_mnist(str(tmp_path / "empty"), "train", mirrors=())


def test_download_checks_md5_and_leaves_no_partial_file(tmp_path):
    server, url = serve(Mirror)
    md5 = Mirror.md5
    target = tmp_path / "f.gz"
    for path, expected_md5, error in (("/good", "0" * 32, "MD5"), ("/drop", md5, "dropped")):
        with pytest.raises(OSError, match=error):
            data.download(url + path, str(target), expected_md5, timeout=5)
        assert os.listdir(tmp_path) == []  # neither the file nor its temporary part
    data.download(url + "/good", str(target), md5, timeout=5)
    with pytest.raises(OSError):  # atomic: a failure over a good file leaves the good file
        data.download(url + "/drop", str(target), md5, timeout=5)
    assert target.read_bytes() == Mirror.body and os.listdir(tmp_path) == ["f.gz"]
    server.shutdown()


def test_runs_without_sysconf_or_torch_cpus_private_checks(tmp_path, monkeypatch):
    """Windows has no os.sysconf; another torch may lack torch.cpu's checks of bf16 units."""
    monkeypatch.delattr(os, "sysconf")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert model.resolve_precision("auto", torch.device("cpu")) == "float32"
    assert run(tmp_path, "run", "--steps", "2", "--no-probe")["steps"] == 2
