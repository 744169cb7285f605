"""Convert scikit-learn's copy of the UCI handwritten digits to ``digits.npz``.

Run once by the maintainers; the result is committed so that nothing is downloaded at run time.
The source is ``sklearn/datasets/data/digits.csv.gz`` (1,797 rows of 64 pixels in 0..16 and a
label), taken from the scikit-learn wheel. The split is stratified and seeded: 20 % of every
class goes to the test split, so it is fixed for every user and every release.

    python data/make_digits.py path/to/digits.csv.gz
"""

import gzip
import sys
from pathlib import Path

import numpy as np


def main(csv_gz: str) -> None:
    with gzip.open(csv_gz, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :64], table[:, 64]
    # 0..16 counts of "on" pixels in a 4x4 block -> 0..255 grey levels.
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test[rng.permutation(members)[: int(round(0.2 * len(members)))]] = True
    out = Path(__file__).with_name("digits.npz")
    np.savez_compressed(
        out,
        train_images=images[~test],
        train_labels=labels[~test].astype(np.uint8),
        test_images=images[test],
        test_labels=labels[test].astype(np.uint8),
    )
    print(f"wrote {out}: {int((~test).sum())} train, {int(test.sum())} test")


if __name__ == "__main__":
    main(sys.argv[1])
