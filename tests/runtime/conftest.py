import pytest


def fmnist_or_skip():
    from pathlib import Path
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def write_config(path, body: str):
    path.write_text(body)
    return path
