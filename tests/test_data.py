"""The data stage: the dataset registry, IDX decoding, checksums, copies and downloads, shards."""

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLED, idx_bytes, skip_unless_required, write_gz
from mpi_ensemble import data

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


def test_parse_idx_roundtrip():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(images)), images)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "first two bytes"),
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc", "element type"),
        (b"\x00\x00\x08\x02" + (3).to_bytes(4, "big"), "truncated"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "needs 5"),
    ],
)
def test_parse_idx_rejects_malformed(raw, message):
    with pytest.raises(ValueError, match=message):
        data.parse_idx(raw)


def test_real_mnist_headers_and_checksums():
    name = "train-labels-idx1-ubyte.gz"
    raw = data.verify(BUNDLED / name, data.expected_sha256("mnist", name))
    labels = data.parse_idx(raw)
    assert labels.shape == (60000,) and labels.max() == 9
    assert np.bincount(labels).min() > 5000


def test_verify_names_file_and_both_hashes(tmp_path):
    raw = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    path = write_gz(tmp_path / "x.gz", raw)
    wrong = "0" * 64
    with pytest.raises(data.ChecksumError) as err:
        data.verify(path, wrong)
    text = str(err.value)
    assert str(path) in text and wrong in text and hashlib.sha256(raw).hexdigest() in text


def test_verify_accepts_recompressed_copy_refuses_truncated(tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    expected = data.expected_sha256("mnist", name)
    raw = data.verify(BUNDLED / name, expected)
    recompressed = write_gz(tmp_path / name, raw, mtime=12345)
    assert recompressed.read_bytes() != (BUNDLED / name).read_bytes()
    data.verify(recompressed, expected)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes((BUNDLED / name).read_bytes()[:2000])
    with pytest.raises(data.ChecksumError, match="truncated.gz"):
        data.verify(truncated, expected)


@pytest.mark.parametrize("n_items, ranks", [(60000, 1), (60000, 7), (6000, 2), (10, 3), (17, 5)])
def test_shards_cover_every_image_exactly_once(n_items, ranks):
    ranges = [data.shard_range(n_items, ranks, r) for r in range(ranks)]
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    np.testing.assert_array_equal(covered, np.arange(n_items))
    sizes = [b - a for a, b in ranges]
    assert sizes[:-1] == [n_items // ranks] * (ranks - 1)  # the paper's chunks; the last takes the remainder


def test_shard_refuses_empty_shards_and_bad_ranks():
    with pytest.raises(ValueError, match="non-empty shards"):
        data.shard_range(3, 4, 0)
    with pytest.raises(ValueError, match="not in a world"):
        data.shard_range(10, 2, 2)


def test_validation_split_matches_keras():
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    for n in (7, 100, 4800, 8571):
        x = np.arange(n)
        train, _ = train_validation_split((x,), validation_split=0.2)
        assert data.validation_split_index(n, 0.2) == len(train[0])


def test_require_files_lists_every_missing_file(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"")
    with pytest.raises(data.DataSourceError) as err:
        data.require_files(tmp_path, ["a.gz", "b.gz", "c.gz"])
    assert "b.gz" in str(err.value) and "c.gz" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(data.DataSourceError, match="does not exist"):
        data.require_files(tmp_path / "nowhere", ["a.gz"])


def test_to_arrays_scales_and_shapes():
    x, y = data.to_arrays(np.full((3, 28, 28), 255, dtype=np.uint8), np.array([1, 2, 3], dtype=np.uint8))
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32 and x.max() == 1.0
    assert y.dtype == np.int64


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP mirror on localhost serving one good and one altered copy of a file."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    name = "t10k-labels-idx1-ubyte.gz"
    (good / name).write_bytes((BUNDLED / name).read_bytes())
    (bad / name).write_bytes((BUNDLED / name).read_bytes()[:-100] + b"\0" * 100)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", name
    server.shutdown()


def test_download_tries_next_mirror_and_verifies(mirror, tmp_path):
    base, name = mirror
    dest = tmp_path / "out" / name
    url = data.download_verified(
        name, dest, data.expected_sha256("mnist", name), [f"{base}/missing", f"{base}/bad", f"{base}/good"]
    )
    assert url.endswith(f"/good/{name}")
    assert dest.read_bytes() == (BUNDLED / name).read_bytes()


def test_failed_download_leaves_nothing(mirror, tmp_path):
    base, name = mirror
    dest = tmp_path / "out" / name
    with pytest.raises(data.DataSourceError) as err:
        data.download_verified(name, dest, data.expected_sha256("mnist", name), [f"{base}/bad", f"{base}/none"])
    assert f"{base}/bad/{name}: " in str(err.value) and "404" in str(err.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_data_source_prefers_data_dir_then_bundled_then_download(tmp_path):
    names = data.file_names("mnist")
    bundled = [str(BUNDLED / name) for name in names]
    assert data.data_source(None, bundled, names) == str(BUNDLED)
    assert data.data_source(str(BUNDLED), [None] * 4, names) == str(BUNDLED)
    assert data.data_source(None, [*bundled[:3], None], names) is None  # a file not bundled: download
    with pytest.raises(data.DataSourceError, match="lacks 4 file"):
        data.data_source(str(tmp_path), bundled, names)  # a data_dir never falls back


def test_shards_left_empty_after_the_validation_cut_are_refused():
    data.check_shards([1, 2, 8], 60000, 0.2)
    with pytest.raises(ValueError, match="ranks 4 with 6 training images leaves shards of 1 image"):
        data.check_shards([2, 4], 6, 0.2)


def test_fetch_data_copies_and_verifies(tmp_path):
    outs = [tmp_path / "res" / name for name in data.file_names("mnist")]
    lines = data.fetch_data("mnist", outs, source_dir=BUNDLED)
    assert len(lines) == 4 and all("SHA-256 verified" in line for line in lines)
    assert all(out.read_bytes() == (BUNDLED / out.name).read_bytes() for out in outs)


# --- the dataset registry -------------------------------------------------------------------------------------


def test_dataset_registry():
    for name in ("mnist", "fashion_mnist", "kmnist"):
        assert data.file_names(name) == data.file_names("mnist")
        assert data.dataset_spec(name)["mirrors"]
    assert not data.missing_checksums("fashion_mnist")
    assert all(len(d) == 64 for _, d in data.dataset_spec("fashion_mnist")["files"].values())
    # KMNIST: no trustworthy SHA-256 of the decompressed files is recorded, so it fails closed
    with pytest.raises(data.UnknownChecksumError, match="not recorded"):
        data.expected_sha256("kmnist", "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.dataset_spec("cifar")


def fashion_files_or_skip():
    names = data.file_names("fashion_mnist")
    missing = data.missing_files(FASHION_DIR, names)
    if missing:
        skip_unless_required(f"Fashion-MNIST not found in {FASHION_DIR} (missing {', '.join(missing)}); "
                             "install Debian's package: apt-get install -y dataset-fashion-mnist (.ci/run does)")
    return names


def test_fashion_mnist_debian_copy_verifies_and_altered_copy_fails(tmp_path):
    fashion_files_or_skip()
    name = "t10k-labels-idx1-ubyte.gz"
    expected = data.expected_sha256("fashion_mnist", name)
    raw = data.verify(FASHION_DIR / name, expected)  # Debian re-gzipped it: the decompressed content still matches
    labels = data.parse_idx(raw)
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    altered = bytearray(raw)
    altered[-1] = (altered[-1] + 1) % 10
    with pytest.raises(data.ChecksumError, match="checksum mismatch"):
        data.verify(write_gz(tmp_path / name, bytes(altered)), expected)


def test_shard_check_counts_the_datasets_own_training_images(monkeypatch):
    """The shard check gets the dataset's own count (a dataset of 1,000 images cannot feed 500 ranks after the
    validation cut), or max_train_images where that is fewer."""
    monkeypatch.setitem(data.DATASETS, "tiny", {**data.DATASETS["mnist"], "train_images": 1000})
    assert data.train_count("tiny") == 1000 and data.train_count("tiny", 400) == 400
    assert data.train_count("tiny", 5000) == 1000 and data.train_count("mnist") == 60000
    data.check_shards([500], data.train_count("mnist"), 0.6)
    with pytest.raises(ValueError, match="ranks 500"):
        data.check_shards([500], data.train_count("tiny"), 0.6)
