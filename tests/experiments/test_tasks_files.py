"""Round trips through each external file format (IMDb, AAN, CIFAR-10, MNIST) and missing-data errors."""

import numpy as np
import pytest

from algornn.experiments.tasks import get_task
from algornn.experiments.tasks.text import decode_bytes
from tests.experiments._task_files import write_aan_tsv, write_cifar, write_idx_file, write_imdb


def _text_of(ids, n):
    return bytes((np.asarray(ids[:n]) - 1).astype(np.uint8).tolist()).decode("utf-8")


def test_imdb_round_trip(tmp_path):
    reviews = {
        ("train", "pos"): ["Great film!", "Loved it — café scene"],
        ("train", "neg"): ["Awful."],
        ("test", "pos"): ["Fine " * 30],
        ("test", "neg"): ["Meh", "nul\x00byte"],
    }
    write_imdb(tmp_path, reviews)
    t = get_task("text", data_dir=tmp_path, seq_len=64)
    assert (t.vocab_size, t.num_classes, t.seq_len) == (257, 2, 64)
    tr = t.examples("train", np.arange(3))
    assert tr["inputs"].dtype == np.int32 and (tr["inputs"][0, tr["lengths"][0] :] == 0).all()
    texts = [_text_of(x, n) for x, n in zip(tr["inputs"], tr["lengths"])]
    assert sorted(zip(texts, tr["labels"].tolist())) == sorted(
        [("Great film!", 1), ("Loved it — café scene", 1), ("Awful.", 0)]
    )
    assert tr["lengths"][texts.index("Loved it — café scene")] == len("Loved it — café scene".encode())
    te = t.split_arrays("test")
    assert te["lengths"].max() == 64  # truncated to seq_len
    ids = t.examples("test", np.arange(3))["inputs"]
    assert (ids == 1).sum() == 1 and _text_of(ids[1], 8) == "nul\x00byte"  # a NUL byte is id 1, not padding
    assert t.num_examples("val") == t.num_examples("test") == 3  # LRA: no IMDb val set, val = test
    b = next(t.batches("train", 2, seed=0))
    assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (2, 64)
    assert decode_bytes(tr["inputs"][0]) == texts[0]


def test_aan_round_trip(tmp_path):
    long_doc = "x" * 12000 + "TAIL"
    rows = {
        "train": [(1, "a1", "b1", "first doc", "second doc"), (0, "a2", "b2", long_doc, "ünïcode")],
        "eval": [(0, "a3", "b3", "v1", "v2")],
        "test": [(1, "a4", "b4", "t1", "t2")],
    }
    for split, r in rows.items():
        write_aan_tsv(tmp_path / f"new_aan_pairs.{split}.tsv", r)
    t = get_task("retrieval", data_dir=tmp_path, seq_len=11000)
    assert t.pair and t.num_classes == 2
    b = next(t.batches("val", 1, seed=0))
    assert set(b) == {"inputs", "lengths", "inputs2", "lengths2", "labels", "mask"}
    assert _text_of(b["inputs"][0], b["lengths"][0]) == "v1" and _text_of(b["inputs2"][0], b["lengths2"][0]) == "v2"
    tr = t.examples("train", [0, 1])
    assert tr["labels"].tolist() == [1, 0]
    assert tr["lengths"][1] == 10000  # LRA cuts documents to their first 10000 characters
    assert _text_of(tr["inputs2"][1], tr["lengths2"][1]) == "ünïcode"
    short = get_task("retrieval", data_dir=tmp_path)  # default 4000 bytes per document
    assert next(short.batches("train", 2, seed=0))["inputs"].shape == (2, 4000)


def test_cifar_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {f"data_batch_{i}": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for i in range(1, 6)}
    imgs["test_batch"] = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labels = {k: rng.integers(0, 10, len(v)) for k, v in imgs.items()}
    write_cifar(tmp_path, imgs, labels)
    train_imgs = np.concatenate([imgs[f"data_batch_{i}"] for i in range(1, 6)])
    train_labels = np.concatenate([labels[f"data_batch_{i}"] for i in range(1, 6)])

    gray = get_task("image", data_dir=tmp_path)
    assert gray.num_examples("train") == 18 and gray.num_examples("val") == 2 and gray.num_examples("test") == 3
    x = gray.split_arrays("train")["inputs"].astype(float)
    rgb = train_imgs[:18].astype(float)
    expected = 0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]
    assert np.abs(x.reshape(18, 32, 32) - expected).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(gray.split_arrays("val")["labels"], train_labels[18:])
    b = next(gray.batches("test", 4, seed=0))
    assert b["inputs"].shape == (4, 1024, 1) and b["mask"].tolist() == [True, True, True, False]

    colour = get_task("scifar", data_dir=tmp_path)
    c = colour.split_arrays("test")["inputs"]
    np.testing.assert_array_equal(c.reshape(3, 32, 32, 3), imgs["test_batch"])  # row-major pixels, RGB last
    bc = next(colour.batches("train", 2, seed=0))
    assert bc["inputs"].shape == (2, 1024, 3) and colour.input_dim == 3
    tok = get_task("image", data_dir=tmp_path, tokens=True)
    bt = next(tok.batches("test", 3, seed=0))
    np.testing.assert_array_equal(bt["inputs"] - 1, gray.split_arrays("test")["inputs"])


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ytrain, ytest = rng.integers(0, 10, 24), rng.integers(0, 10, 5)
    write_idx_file(tmp_path / "train-images-idx3-ubyte", train, gz)
    write_idx_file(tmp_path / "train-labels-idx1-ubyte", ytrain, gz)
    write_idx_file(tmp_path / "t10k-images-idx3-ubyte", test, gz)
    write_idx_file(tmp_path / "t10k-labels-idx1-ubyte", ytest, gz)
    s = get_task("smnist", data_dir=tmp_path)
    assert s.seq_len == 784 and [s.num_examples(k) for k in ("train", "val", "test")] == [22, 2, 5]
    np.testing.assert_array_equal(s.split_arrays("train")["inputs"], train[:22].reshape(22, 784))
    np.testing.assert_array_equal(s.split_arrays("test")["labels"], ytest)
    p = get_task("psmnist", data_dir=tmp_path)
    px, sx = p.split_arrays("test")["inputs"], s.split_arrays("test")["inputs"]
    perm = np.array([np.flatnonzero((sx == px[:, [j]]).all(0))[0] for j in range(784)])
    assert sorted(perm.tolist()) == list(range(784)) and not np.array_equal(perm, np.arange(784))
    p2 = get_task("psmnist", data_dir=tmp_path)  # the permutation is fixed
    np.testing.assert_array_equal(p2.split_arrays("test")["inputs"], px)


def test_bad_idx_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    from algornn.experiments.tasks.image import read_idx

    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "train-images-idx3-ubyte")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("text", "aclImdb/train/pos"),
        ("retrieval", "new_aan_pairs.train.tsv"),
        ("image", "data_batch_1"),
        ("scifar", "test_batch"),
        ("smnist", "train-images-idx3-ubyte"),
        ("psmnist", "t10k-labels-idx1-ubyte"),
    ],
)
def test_missing_data_dir_lists_expected_files(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match=expected) as err:
        get_task(name, data_dir=tmp_path / "nowhere")
    assert "Source:" in str(err.value)
    with pytest.raises(FileNotFoundError, match="Source:"):
        get_task(name)  # no data_dir at all


def test_incomplete_cifar_dir_marks_the_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {f"data_batch_{i}": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for i in (1, 2)}
    write_cifar(tmp_path, imgs, {k: [0, 1] for k in imgs})
    with pytest.raises(FileNotFoundError) as err:
        get_task("image", data_dir=tmp_path)
    msg = str(err.value)
    assert "data_batch_1  (found)" in msg and "data_batch_3  (MISSING)" in msg and "test_batch  (MISSING)" in msg
