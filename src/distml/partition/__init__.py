"""Partition: data sources, sample partitioners, per-rank loaders and feature splits.

``SOURCES`` holds the data sources (fashion_mnist, sklearn, svmlight, csv, npz,
synthetic, text) and ``PARTITIONS`` the sample partitioners (shuffle_split,
contiguous, random_sampling, dirichlet); importing this package registers them all.

Choosing a partition: sample partitions when the model fits on every worker —
shuffle_split for the usual without-replacement epochs, random_sampling for i.i.d.
draws with replacement (the assumption of most SGD analyses), dirichlet to study
non-IID data, contiguous for ordered data (a language model's text windows). :class:`FeatureSplit` (dimension partition) when the feature dimension
is too large for one worker or the optimizer is a dual / coordinate method.
"""

from distml.partition import files, idx, npz, samplers, sklearn_sets, synthetic, text  # noqa: F401  (register)
from distml.partition.base import PARTITIONS, SOURCES, ArrayData, DataInfo, OfflineSource, Source
from distml.partition.features import FeatureSplit
from distml.partition.loader import OnlineLoader, ShardLoader, make_loader
from distml.partition.samplers import SamplePartition

__all__ = ["SOURCES", "PARTITIONS", "ArrayData", "DataInfo", "Source", "OfflineSource",
           "SamplePartition", "ShardLoader", "OnlineLoader", "make_loader", "FeatureSplit"]
