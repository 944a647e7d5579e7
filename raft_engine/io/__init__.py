"""Files in and out: images, Middlebury .flo and KITTI PNG flow files, video (PyAV, the optional `video`
extra) and the colour-wheel pictures of flow."""

from raft_engine.io.flow_files import (
    FLO_MAGIC,
    KITTI_OFFSET,
    KITTI_SCALE,
    VIDEO_SUFFIXES,
    VideoReader,
    VideoWriter,
    as_flow_array,
    read_flo,
    read_image,
    read_kitti_flow,
    read_video,
    video_codec,
    write_flo,
    write_image,
    write_kitti_flow,
    write_video,
)
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
    "flow_to_color",
    "read_flo",
    "read_image",
    "read_kitti_flow",
    "read_video",
    "video_codec",
    "write_flo",
    "write_image",
    "write_kitti_flow",
    "write_video",
]
