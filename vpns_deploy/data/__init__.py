"""Data: specs like `digits`, `tar:FILE`, `imagefolder:DIR`, `cifar10:ROOT`, held in memory as uint8."""
from vpns_deploy.data.dataset import AugmentPolicy, ImageSet, Splits
from vpns_deploy.data.sources import DATA_SPEC_HELP, absolute_spec, load_splits

__all__ = ["AugmentPolicy", "ImageSet", "Splits", "DATA_SPEC_HELP", "absolute_spec", "load_splits"]
