"""Prepare-time checking and encoding of one clip's frames.

Every frame is decoded once, with the decoder the input pipeline uses at train time
(tf.io.decode_jpeg, accurate DCT), so a clip that passes here cannot fail mid-epoch.
Frames that are already RGB JPEGs of the clip's size are stored byte for byte; others are
re-encoded as RGB JPEG (quality 95):
- grayscale / CMYK / palette JPEGs or other formats -> RGB JPEG (warning),
- a frame whose size differs from the clip's first frame -> resized to that size (warning;
  the pipeline crops all frames of a clip with one window, so sizes must agree),
- stored_frame_size > 0 -> shorter side resized to it (aspect kept, never enlarged).
A frame that cannot be read or decoded (corrupt, truncated) skips the whole clip: dropping
a frame would silently change the clip's timing.
"""

import dataclasses
import io

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from former_dfer_jax.data.sources import ClipRecord, ProblemReport

JPEG_QUALITY = 95
DCT_METHOD = 'INTEGER_ACCURATE'  # bit-exact with PIL's decoder, which the reference uses


@dataclasses.dataclass
class EncodedClip:
    """A checked clip: RGB JPEG bytes per frame, all of one size."""

    record: ClipRecord
    frames: list[bytes]
    height: int
    width: int


def stored_size(width: int, height: int, stored_frame_size: int) -> tuple[int, int]:
    """(width, height) after the prepare-time resize: shorter side -> stored_frame_size."""
    short = min(width, height)
    if stored_frame_size <= 0 or short <= stored_frame_size:
        return width, height
    scale = stored_frame_size / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=JPEG_QUALITY)
    return buffer.getvalue()


def encode_clip(
    record: ClipRecord, *, stored_frame_size: int = 0
) -> tuple[EncodedClip | None, ProblemReport]:
    """Checks and encodes `record`'s frames; None (and the reason) if the clip is unusable."""
    report = ProblemReport()
    warned: set[str] = set()

    def warn(reason: str, path: str) -> None:
        if reason not in warned:  # one warning per clip and reason, naming its first frame
            warned.add(reason)
            report.warn(reason, path)

    frames: list[bytes] = []
    first_size: tuple[int, int] | None = None
    target: tuple[int, int] | None = None
    for path in record.frames:
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            report.skip('unreadable frame file', f'{path} ({e.strerror})')
            return None, report
        try:
            image = Image.open(io.BytesIO(data))
            fmt, mode, size = image.format, image.mode, image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            report.skip('not a readable image (corrupt or unknown format)', path)
            return None, report
        if first_size is None:
            first_size = size
            target = stored_size(*size, stored_frame_size)
        needs_encode = fmt != 'JPEG' or mode != 'RGB' or size != target
        if needs_encode:
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as e:
                report.skip('corrupt or truncated image', f'{path} ({e})')
                return None, report
            if fmt != 'JPEG':
                warn(f'{fmt} frames re-encoded as JPEG', path)
            if mode != 'RGB':
                kind = {'L': 'grayscale', 'CMYK': 'CMYK'}.get(mode, f'mode {mode}')
                warn(f'{kind} frames converted to RGB', path)
                image = image.convert('RGB')
            if size != first_size:
                warn("frame size differs within the clip (resized to the first frame's)", path)
            if image.size != target:
                image = image.resize(target, Image.Resampling.BILINEAR)
            data = _encode(image)
        try:
            decoded = tf.io.decode_jpeg(data, channels=3, dct_method=DCT_METHOD)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            message = str(e).strip().splitlines()[-1][:120]
            report.skip('corrupt or truncated JPEG', f'{path} ({message})')
            return None, report
        if tuple(decoded.shape[1::-1]) != target:  # the decoder disagrees with the header
            report.skip('JPEG header size differs from its decoded size', path)
            return None, report
        frames.append(data)
    assert target is not None  # record.frames is never empty (sources skip empty clips)
    return EncodedClip(record, frames, height=target[1], width=target[0]), report
