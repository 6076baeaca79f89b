"""Data: specs like `digits`, `tar:FILE`, `imagefolder:DIR`, `cifar10:ROOT`, built at a model's input
(channels, size, crop), held in RAM as uint8 when they fit and streamed by DataLoader workers when not."""
from vpns_deploy.data.dataset import AnySet, AugmentPolicy, ImageSet, Splits, StreamSet
from vpns_deploy.data.sources import DATA_SPEC_HELP, Catalog, absolute_spec, build_splits, load_splits, read_catalog

__all__ = ["AnySet", "AugmentPolicy", "ImageSet", "Splits", "StreamSet", "DATA_SPEC_HELP", "Catalog",
           "absolute_spec", "build_splits", "load_splits", "read_catalog"]
