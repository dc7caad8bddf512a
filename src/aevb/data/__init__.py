"""Data sets: the containers (``dataset``), the registry of built-in sets (``registry``), your own
folders and arrays (``custom``), original-format parsers (``formats``), checked downloads (``files``),
the generated dSprites (``dsprites``)."""

from .dataset import Dataset, Factors, PackedSplit, Split
from .files import DataError, FileSpec, locate
from .registry import DATASETS, DEFAULT_LIKELIHOOD, DatasetInfo, dataset_info, load_dataset

__all__ = ["DATASETS", "DEFAULT_LIKELIHOOD", "DataError", "Dataset", "DatasetInfo", "Factors", "FileSpec", "PackedSplit",
           "Split", "dataset_info", "load_dataset", "locate"]
