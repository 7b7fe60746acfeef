"""Wire images to and from numpy arrays (uint8 RGB pictures, float masks)."""

from __future__ import annotations

import numpy as np

from draggan_wire import protocol
from draggan_wire.protocol import ErrorCode, ProtocolError


def image_to_rgb(image: protocol.Image, field_name: str) -> np.ndarray:
    """Wire image -> uint8 [H, W, 3] (gray repeated, alpha dropped)."""
    array = np.frombuffer(image.data, dtype=np.uint8).reshape(image.height, image.width, image.channels)
    if image.channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif image.channels == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def mask_to_float(mask: protocol.Image) -> np.ndarray:
    """Wire mask (uint8, 255 = may move) -> float32 [H, W] in [0, 1]."""
    return np.frombuffer(mask.data, dtype=np.uint8).reshape(mask.height, mask.width).astype(np.float32) / 255.0


def rgb_to_image(array: np.ndarray) -> protocol.Image:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return protocol.Image(width=array.shape[1], height=array.shape[0], channels=array.shape[2], data=array.tobytes())


def checked_mask(mask: protocol.Image | protocol.PendingImage | None, width: int, height: int) -> np.ndarray | None:
    """The request's mask as float32 [H, W] (None without one); BAD_REQUEST when its size is not the image's."""
    if mask is None:
        return None
    assert isinstance(mask, protocol.Image), "the server decodes PNG payloads before the run"
    if (mask.width, mask.height) != (width, height):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"fields.mask: the mask is {mask.width}x{mask.height}, "
                                                   f"the image {width}x{height}", "fields.mask")
    return mask_to_float(mask)
