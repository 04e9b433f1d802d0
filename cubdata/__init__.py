"""The CUB-200-2011 data layer shared by every package of the toolkit.

Reads the real ``CUB_200_2011`` folder layout (and the degraded / restored copies this toolkit writes,
which use the same layout), decodes any image to RGB, and generates the built-in mini benchmark.
Imports only the run plumbing (`runkit`).
"""
from cubdata.dataset import CubDataset, crop_to_bbox
from cubdata.io import (
    IMAGE_SUFFIXES,
    list_images,
    load_square_tensor,
    ImageDecodeError,
    encode_image,
    load_pil_rgb,
    load_rgb,
    require_decodable,
)
from cubdata.layout import (
    FULL_CUB_COUNTS,
    METADATA_FILES,
    REQUIRED_FILES,
    CubIndex,
    CubLayoutError,
    CubRecord,
    read_cub,
    write_cub_metadata,
)
from cubdata.mini import MINI_CLASSES, MINI_VARIANTS, MINI_VERSION, cache_dir, generate_mini_cub, mini_cub_root
from cubdata.splits import VAL_FRACTION, VAL_SEED, train_val_split

__all__ = [
    "CubDataset", "crop_to_bbox", "ImageDecodeError", "encode_image", "load_pil_rgb", "load_rgb", "FULL_CUB_COUNTS",
    "METADATA_FILES", "REQUIRED_FILES", "CubIndex", "CubLayoutError", "CubRecord", "read_cub", "write_cub_metadata",
    "MINI_CLASSES", "MINI_VERSION", "MINI_VARIANTS", "cache_dir", "generate_mini_cub", "mini_cub_root",
    "IMAGE_SUFFIXES", "list_images", "load_square_tensor", "require_decodable", "VAL_FRACTION", "VAL_SEED", "train_val_split",
]
