"""Pathfinder / Path-X: balance, image statistics, labels that reflect connectivity, release-folder reading."""

import numpy as np
import pytest
from scipy import ndimage

from algornn.experiments.tasks import get_task
from algornn.experiments.tasks import pathfinder as pf
from tests.experiments._task_files import write_pathfinder_release

# Dilation (pixels) that closes the gaps between the dashes of one contour at each size; the generator
# keeps different contours further apart than that.
BRIDGE = {32: 0, 64: 0, 128: 1, 256: 2}


def connected(image, markers, bridge):
    """Flood fill (8-connected components of lit pixels, gaps closed by ``bridge`` dilations)."""
    lit = image > 0
    if bridge:
        lit = ndimage.binary_dilation(lit, iterations=bridge)
    comp, _ = ndimage.label(lit, structure=np.ones((3, 3)))
    a, b = (comp[int(y), int(x)] for x, y in markers)
    return a > 0 and a == b


@pytest.fixture(scope="module")
def sample32():
    return pf.generate(400, seed=11, size=32)


def test_balanced_and_deterministic(sample32):
    images, labels, markers = sample32
    assert images.shape == (400, 32, 32) and images.dtype == np.uint8
    assert labels.sum() == 200 and set(np.unique(labels)) == {0, 1}
    again = pf.generate(400, seed=11, size=32)
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)
    assert not np.array_equal(pf.generate(400, seed=12, size=32)[0], images)


def test_image_statistics(sample32):
    images, labels, markers = sample32
    lit = (images > 0).mean(axis=(1, 2))
    assert 0.05 < lit.min() and lit.max() < 0.4  # sparse contours on a black background
    assert images.max() == 255 and np.median(images) == 0
    # markers are bright discs at contour ends
    rows = np.arange(len(images))[:, None]
    at_markers = images[rows, markers[..., 1].astype(int), markers[..., 0].astype(int)]
    assert (at_markers >= 200).all()
    # no trivial global cue: mean brightness and lit fraction barely differ between classes
    mean_by_class = [images[labels == c].mean() for c in (0, 1)]
    assert abs(mean_by_class[0] - mean_by_class[1]) < 0.05 * np.mean(mean_by_class)
    assert abs(lit[labels == 0].mean() - lit[labels == 1].mean()) < 0.01


def test_label_is_connectivity_32px(sample32):
    images, labels, markers = sample32
    agree = np.mean([connected(im, mk, BRIDGE[32]) == bool(y) for im, mk, y in zip(images, markers, labels)])
    assert agree >= 0.99, f"connectivity agrees with the label on {agree:.3f} of images"


@pytest.mark.parametrize("size, n", [(64, 40), (128, 40), (256, 12)])
def test_label_is_connectivity_larger_sizes(size, n):
    images, labels, markers = pf.generate(n, seed=size, size=size)
    assert images.shape == (n, size, size) and labels.sum() == n // 2
    agree = np.mean([connected(im, mk, BRIDGE[size]) == bool(y) for im, mk, y in zip(images, markers, labels)])
    assert agree >= 0.97, f"{size}px: connectivity agrees with the label on {agree:.3f} of images"


def test_difficulty_sets_contour_length():
    lit = {d: (pf.generate(40, seed=0, size=32, difficulty=d)[0] > 0).mean() for d in ("easy", "intermediate", "hard")}
    assert lit["easy"] < lit["intermediate"] < lit["hard"]


def test_task_batches_and_cache(tmp_path):
    opts = dict(n_train=24, n_val=8, n_test=8, cache_dir=tmp_path)
    t = get_task("pathfinder", **opts)
    assert (t.seq_len, t.input_dim, t.vocab_size, t.num_classes) == (1024, 1, None, 2)
    b = next(t.batches("train", 8, seed=0))
    assert b["inputs"].shape == (8, 1024, 1) and b["inputs"].dtype == np.float32
    assert b["inputs"].min() == -1.0 and b["inputs"].max() == 1.0
    assert len(list(tmp_path.glob("pathfinder32-hard-train-*.npz"))) == 1
    t2 = get_task("pathfinder", **opts)
    np.testing.assert_array_equal(t2.split_arrays("train")["inputs"], t.split_arrays("train")["inputs"])
    tok = get_task("pathfinder", tokens=True, **opts)
    bt = next(tok.batches("train", 8, seed=0))
    assert bt["inputs"].dtype == np.int32 and bt["inputs"].shape == (8, 1024) and bt["inputs"].min() >= 1
    np.testing.assert_array_equal(bt["inputs"] - 1, np.round((b["inputs"][..., 0] + 1) * 127.5))
    px = get_task("pathx", n_train=2, n_val=2, n_test=2, cache_dir=False)
    assert px.seq_len == 128 * 128 and px.num_examples("val") == 2


def test_reads_release_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 2, 20)
    write_pathfinder_release(tmp_path / "lra_release", 32, "curv_contour_length_14", images, labels)
    t = get_task("pathfinder", data_dir=tmp_path / "lra_release", cache_dir=tmp_path / "cache")
    sizes = [t.num_examples(s) for s in ("train", "val", "test")]
    assert sizes == [16, 2, 2]
    got = np.concatenate([t.split_arrays(s)["inputs"] for s in ("train", "val", "test")])
    got_labels = np.concatenate([t.split_arrays(s)["labels"] for s in ("train", "val", "test")])
    order = [next(i for i in range(20) if np.array_equal(images[i].reshape(-1), g)) for g in got]
    assert sorted(order) == list(range(20))  # every image exactly once across the splits
    np.testing.assert_array_equal(got_labels, labels[order])
    # also found when pointing at the difficulty folder itself; wrong difficulty lists what is expected
    t2 = get_task(
        "pathfinder", data_dir=tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14", cache_dir=False
    )
    assert t2.num_examples("train") == 16
    with pytest.raises(FileNotFoundError, match="curv_baseline/metadata"):
        get_task("pathfinder", data_dir=tmp_path / "lra_release", difficulty="easy")


@pytest.mark.slow
@pytest.mark.parametrize("size, n", [(32, 4000), (64, 1000), (128, 600), (256, 150)])
def test_connectivity_agreement_large_sample(size, n):
    images, labels, markers = pf.generate(n, seed=1000 + size, size=size)
    agree = np.mean([connected(im, mk, BRIDGE[size]) == bool(y) for im, mk, y in zip(images, markers, labels)])
    print(f"pathfinder{size}: label/connectivity agreement {agree:.4f} on {n} images")
    assert agree >= 0.995
