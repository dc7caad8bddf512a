"""Image files for the explorer's upload tests, well-formed (through Pillow) and hand-built (chunk by chunk)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, chunks: bytes, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose header claims width x height, whatever ``chunks`` (IDAT and others, built by png_chunk) hold."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + chunks + png_chunk(b"IEND", b"")


def zeros_png(width: int, height: int, bit_depth: int = 1, before: bytes = b"") -> bytes:
    """A black grey-scale image of any size, its rows compressed (a decompression bomb when large)."""
    row = 1 + (width * bit_depth + 7) // 8  # filter byte + packed pixels
    return png_file(width, height, before + png_chunk(b"IDAT", zlib.compress(bytes(row * height), 9)), bit_depth)
