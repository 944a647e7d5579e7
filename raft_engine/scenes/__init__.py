"""Generated image pairs and clips with exact ground-truth optical flow, deterministic by seed.

A scene is a textured background and several textured foreground objects, painted back to front.
Every layer moves by its own motion between the frames, so the flow of every pixel of frame 1 is known
exactly: it is the motion of the layer visible there, occluded in frame 2 or not. `layers` holds what
scenes are made of, `v1` the original scenes and `generate_pair`, `v2` the scenes closer to natural
footage (`SceneStyle`), `sequences` the N-frame clips, `photos` the photographs v2 textures come from.

Seeds below `TRAINING_SEED_START` are held out: the training code never draws them.
"""

from raft_engine.scenes.layers import (
    SUPERSAMPLING,
    TRAINING_SEED_START,
    Layer,
    Pose,
    ScenePair,
    make_texture,
    occlusion_between,
)
from raft_engine.scenes.photos import HELD_OUT_PHOTOS, PHOTO_SOURCE, TRAINING_PHOTOS, load_photo
from raft_engine.scenes.sequences import SceneSequence, Trajectory, generate_sequence
from raft_engine.scenes.v1 import generate_pair, scene_tensors
from raft_engine.scenes.v2 import STYLE_GROUPS, SceneStyle

__all__ = [
    "HELD_OUT_PHOTOS",
    "PHOTO_SOURCE",
    "STYLE_GROUPS",
    "SUPERSAMPLING",
    "TRAINING_PHOTOS",
    "TRAINING_SEED_START",
    "Layer",
    "Pose",
    "ScenePair",
    "SceneSequence",
    "SceneStyle",
    "Trajectory",
    "generate_pair",
    "generate_sequence",
    "load_photo",
    "make_texture",
    "occlusion_between",
    "scene_tensors",
]
