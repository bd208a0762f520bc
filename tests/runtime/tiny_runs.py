"""The smallest real run the runtime tests train: 2 workers, softmax regression on digits.

Tests append their own sections (``[train]``, ``[algorithm]``, ``[faults]``).
"""

DIGITS_TWO_WORKERS = """
workers = 2
[data]
source = { name = "sklearn", dataset = "digits" }
batch_size = 32
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 0.1
"""


def digits_config(name: str, sections: str) -> str:
    """A TOML config named ``name``: :data:`DIGITS_TWO_WORKERS` plus ``sections``."""
    return f'name = "{name}"\n' + DIGITS_TWO_WORKERS + sections
