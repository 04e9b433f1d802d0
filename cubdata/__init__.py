"""The CUB-200-2011 data layer shared by every package of the toolkit.

Reads the real ``CUB_200_2011`` folder layout (and the degraded / restored copies this toolkit writes,
which use the same layout), decodes any image to RGB, and generates the built-in mini benchmark.
Imports none of the toolkit's other packages.
"""
from .dataset import CubDataset, crop_to_bbox
from .io import (
    IMAGE_SUFFIXES,
    csv_text,
    list_images,
    load_square_tensor,
    read_csv,
    write_csv,
    ImageDecodeError,
    atomic_save_torch,
    atomic_write_bytes,
    atomic_write_text,
    encode_image,
    load_torch_file,
    load_pil_rgb,
    sha256_file,
    load_rgb,
    unwrap_state_dict,
)
from .layout import (
    FULL_CUB_COUNTS,
    METADATA_FILES,
    REQUIRED_FILES,
    CubIndex,
    CubLayoutError,
    CubRecord,
    read_cub,
    write_cub_metadata,
)
from .mini import MINI_CLASSES, MINI_VARIANTS, MINI_VERSION, cache_dir, generate_mini_cub, mini_cub_root

__all__ = [
    "CubDataset", "crop_to_bbox", "ImageDecodeError", "atomic_save_torch", "atomic_write_bytes",
    "atomic_write_text", "encode_image", "load_pil_rgb", "load_rgb", "sha256_file", "FULL_CUB_COUNTS", "METADATA_FILES",
    "REQUIRED_FILES", "CubIndex", "CubLayoutError", "CubRecord", "read_cub", "write_cub_metadata",
    "MINI_CLASSES", "MINI_VERSION", "MINI_VARIANTS", "cache_dir", "generate_mini_cub", "mini_cub_root",
    "IMAGE_SUFFIXES", "load_torch_file", "list_images", "load_square_tensor", "csv_text", "write_csv", "read_csv",
    "unwrap_state_dict",
]
