"""Data sets: registry, original-format parsers, checked downloads."""

from .files import DataError, FileSpec, locate
from .registry import DATASETS, DEFAULT_LIKELIHOOD, Dataset, Split, load_dataset

__all__ = ["DATASETS", "DEFAULT_LIKELIHOOD", "DataError", "Dataset", "FileSpec", "Split", "load_dataset", "locate"]
