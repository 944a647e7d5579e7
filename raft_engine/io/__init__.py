"""Files in and out: images, Middlebury .flo and KITTI PNG flow files, video (PyAV, the optional `video`
extra) and the colour-wheel pictures of flow. A leaf of the package: it imports nothing of the rest.

Flow arrays here are numpy (H, W, 2) float32, (u, v) = (x, y) displacement in pixels; the writers
also take a torch tensor (2, H, W), as a model returns per image. Every file is written to a temporary
name beside the target and renamed into place: an interrupted write never leaves a truncated file.
"""

from raft_engine.io.flow_files import (
    FLO_MAGIC,
    KITTI_OFFSET,
    KITTI_SCALE,
    as_flow_array,
    flo_bytes,
    kitti_flow_bytes,
    read_flo,
    read_kitti_flow,
    write_flo,
    write_kitti_flow,
)
from raft_engine.io.images import read_image, write_image, write_mask
from raft_engine.io.video import VIDEO_SUFFIXES, VideoReader, VideoWriter, read_video, video_codec, write_video
from raft_engine.io.visualize import color_wheel, flow_to_color

__all__ = [
    "FLO_MAGIC",
    "KITTI_OFFSET",
    "KITTI_SCALE",
    "VIDEO_SUFFIXES",
    "VideoReader",
    "VideoWriter",
    "as_flow_array",
    "color_wheel",
    "flo_bytes",
    "flow_to_color",
    "kitti_flow_bytes",
    "read_flo",
    "read_image",
    "read_kitti_flow",
    "read_video",
    "video_codec",
    "write_flo",
    "write_image",
    "write_kitti_flow",
    "write_mask",
    "write_video",
]
