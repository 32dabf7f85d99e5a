"""Face pipeline for raw videos: decode (PyAV) -> detect (MTCNN) -> track -> align.

    from former_dfer_jax import video
    face_video = video.extract_face_video('clip.mp4', video.FaceOptions(detect_every=2))
    face_video.crops  # uint8 [n, 256, 256, 3], aligned like DFEW's face crops

    track = video.track_faces('long.mp4')       # pass 1: boxes only, no pixels kept
    for crop in video.aligned_crops(track): ...  # pass 2: one aligned crop at a time

Modules: decode (video files and frame folders -> upright RGB frames with timestamps),
detect (FaceDetector protocol, MTCNN), track (one subject per video, smoothed), align
(5-point similarity warp), faces (the whole pipeline). Errors a user can cause raise
`VideoError`, whose message starts with the file's path.
"""

from former_dfer_jax.video.align import align_face
from former_dfer_jax.video.decode import (
    Frame,
    VideoError,
    VideoInfo,
    is_video_path,
    probe,
    read_frames,
)
from former_dfer_jax.video.detect import Face, FaceDetector, MtcnnDetector, default_detector
from former_dfer_jax.video.faces import (
    AlignedCrop,
    FaceOptions,
    FaceTrack,
    FaceVideo,
    aligned_crops,
    extract_face_video,
    save_crops,
    staged_folder,
    track_faces,
)
from former_dfer_jax.video.track import Tracking, iou, track_main_face

__all__ = [
    'AlignedCrop',
    'Face',
    'FaceDetector',
    'FaceOptions',
    'FaceTrack',
    'FaceVideo',
    'Frame',
    'MtcnnDetector',
    'Tracking',
    'VideoError',
    'VideoInfo',
    'align_face',
    'aligned_crops',
    'default_detector',
    'extract_face_video',
    'iou',
    'is_video_path',
    'probe',
    'read_frames',
    'save_crops',
    'staged_folder',
    'track_faces',
    'track_main_face',
]
