"""Writers of tiny data files in each standard format, written by hand from the format definitions
(not through the readers' own helpers), so reading them back is a real round trip."""

import gzip
import pickle
import struct

import numpy as np


def write_listops_tsv(path, rows):
    """LRA ListOps TSV: header ``Source<TAB>Target``, one ``source<TAB>label`` line per example."""
    with open(path, "w") as f:
        f.write("Source\tTarget\n")
        for source, label in rows:
            f.write(f"{source}\t{label}\n")


def write_aan_tsv(path, rows):
    """LRA AAN TSV: no header; ``label id1 id2 text1 text2`` with the label written as a float."""
    with open(path, "w", encoding="utf-8") as f:
        for label, id1, id2, t1, t2 in rows:
            f.write(f"{float(label)}\t{id1}\t{id2}\t{t1}\t{t2}\n")


def write_imdb(root, reviews):
    """``reviews``: {(part, cls): [text, ...]} -> ``root/aclImdb/<part>/<cls>/<i>_<rating>.txt``."""
    for (part, cls), texts in reviews.items():
        folder = root / "aclImdb" / part / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (folder / f"{i}_{8 if cls == 'pos' else 2}.txt").write_text(text, encoding="utf-8")


def write_cifar(root, images_by_file, labels_by_file):
    """CIFAR-10 python batches: pickled dicts with bytes keys; data rows are R, G, B planes of 32x32."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, images in images_by_file.items():
        planes = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), 3072)  # (N, 32, 32, 3)
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in labels_by_file[name]],
            b"data": planes,
            b"filenames": [f"{i}.png".encode() for i in range(len(images))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)


def write_idx_file(path, array, gz=False):
    """IDX: magic 0 0 0x08 ndim, big-endian uint32 dimensions, then the uint8 data."""
    array = np.asarray(array, np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)


def write_pathfinder_release(root, size, difficulty_dir, images, labels, per_meta=7):
    """LRA release layout: ``pathfinder<S>/<difficulty>/imgs/<k>/sample_<i>.png`` + ``metadata/<k>.npy``
    text files with fields ``imgs/<k> sample_<i>.png <unused> <label>`` (and more unused fields)."""
    from PIL import Image

    base = root / f"pathfinder{size}" / difficulty_dir
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    for k in range((len(images) + per_meta - 1) // per_meta):
        (base / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(k * per_meta, min((k + 1) * per_meta, len(images))):
            Image.fromarray(np.asarray(images[i], np.uint8), mode="L").save(base / "imgs" / str(k) / f"sample_{i}.png")
            lines.append(f"imgs/{k} sample_{i}.png {i} {int(labels[i])} 14 2 0.5 1.5")
        (base / "metadata" / f"{k}.npy").write_text("\n".join(lines) + "\n")
    return base
