"""Is a frame file usable? Readable, non-empty, decodable, complete, and of a pixel mode the loaders convert right.

The loaders decode with PIL and `.convert('RGB')`. That is exact for 8-bit RGB, L, RGBA and CMYK; for other modes
it is silently wrong (a 16-bit grey PNG, mode 'I;16', clips to an all-white frame), so those are refused.
"""

from __future__ import annotations

import dataclasses
import io

ACCEPTED_MODES = ("RGB", "L", "RGBA", "CMYK")


@dataclasses.dataclass(frozen=True)
class FrameCheck:
    kind: str | None = None               # None (usable) | 'corrupt_image' | 'bad_image_mode'
    message: str = ""
    size_wh: tuple[int, int] | None = None
    format: str | None = None             # PIL format name, e.g. 'JPEG'


def mode_problem(img) -> str | None:
    """Why an opened PIL image cannot be converted to 8-bit RGB faithfully, or None."""
    if img.mode not in ACCEPTED_MODES:
        return (f"pixel mode {img.mode!r} ({img.format}); expected 8-bit RGB, L (grey), RGBA or CMYK "
                f"(convert the frame, e.g. to an 8-bit RGB JPEG)")
    # PIL opens 16-bit-per-sample RGB(A) PNG/TIFF as mode 'RGB(A)' and drops the low byte: refuse the bit depth.
    for tile in getattr(img, "tile", None) or ():
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return f"16 bits per sample ({img.format}, raw mode {rawmode!r}); expected 8-bit RGB, L, RGBA or CMYK"
    return None


def check_frame_file(path: str, full_decode: bool = True) -> FrameCheck:
    """Open `path` and check it (full decode unless `full_decode` is False: header, mode and JPEG end marker)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return FrameCheck("corrupt_image", f"cannot read the file ({type(e).__name__}: {e})")
    if not data:
        return FrameCheck("corrupt_image", "empty file (0 bytes), e.g. an interrupted copy")
    try:
        img = Image.open(io.BytesIO(data))
        size, fmt = img.size, img.format
        bad_mode = mode_problem(img)
        if bad_mode is None and full_decode:
            img.load()  # raises on truncated / corrupt entropy-coded data
    except Image.UnidentifiedImageError:
        return FrameCheck("corrupt_image", f"not an image file PIL can read; it starts with {data[:24]!r} "
                                           f"({len(data)} bytes)")
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
        if "truncat" in str(e).lower():
            return FrameCheck("corrupt_image", f"truncated: the file ends before the image data does (an "
                                               f"interrupted copy?); {len(data)} bytes ({type(e).__name__}: {e})")
        return FrameCheck("corrupt_image", f"cannot decode ({type(e).__name__}: {e}); {len(data)} bytes")
    if bad_mode is not None:
        return FrameCheck("bad_image_mode", bad_mode, size, fmt)
    if fmt == "JPEG" and not _jpeg_complete(data):
        return FrameCheck("corrupt_image", f"truncated JPEG: no end-of-image marker after the image data "
                                           f"({len(data)} bytes; a copy cut short or zero-filled at the end)")
    return FrameCheck(None, "", (int(size[0]), int(size[1])), fmt)


def _jpeg_complete(data: bytes) -> bool:
    """A copy cut short (or zero-filled at the end) may still decode, so look for the end-of-image marker after
    the last start-of-scan. Entropy-coded data never holds 0xFFD9 (0xFF is stuffed as 0xFF00), so a marker there
    is the real end, and bytes some cameras append after it are no reason to refuse the frame."""
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos + 2) >= 0
