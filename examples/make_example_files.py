"""Write the data files the svmlight / csv / npz examples read, into examples/data/.

Run once before those examples:  python examples/make_example_files.py
The files come from scikit-learn's bundled sets (no download) and are not part of the repo.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import dump_svmlight_file, load_breast_cancer, load_digits, load_wine

OUT = Path(__file__).resolve().parent / "data"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    bc = load_breast_cancer()                      # binary, 30 features -> svmlight, labels -1/+1
    x = (bc.data - bc.data.mean(0)) / bc.data.std(0)
    dump_svmlight_file(x, np.where(bc.target == 1, 1, -1), str(OUT / "breast_cancer.svm"))

    wine = load_wine()                             # 3 classes, named label column -> csv
    header = ",".join(list(wine.feature_names) + ["cultivar"])
    rows = np.column_stack([wine.data, wine.target])
    np.savetxt(OUT / "wine.csv", rows, delimiter=",", header=header, comments="",
               fmt=["%.6g"] * wine.data.shape[1] + ["%d"])

    digits = load_digits()                         # 10 classes, images -> npz with a test split
    x = (digits.images / 16.0).astype(np.float32)[:, None]     # (n, 1, 8, 8)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    test, train = perm[:360], perm[360:]
    np.savez(OUT / "digits.npz", x=x[train], y=y[train], x_test=x[test], y_test=y[test])
    for f in sorted(OUT.iterdir()):
        print(f"wrote {f} ({f.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
