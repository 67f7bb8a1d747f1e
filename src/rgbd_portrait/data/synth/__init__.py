"""The synthetic studio: procedural human heads rendered with exact depth, normals, albedo and relighting.

`render_dataset` writes a whole data set (the `rgbd-portrait synth` command); `render_samples` renders
views in memory. Heads are smooth signed-distance fields (`head`), sphere-traced in batches on the CPU or a
GPU (`renderer`); talking sequences pair frames with synthetic speech (`talking`, `speech`).
"""

from rgbd_portrait.data.synth.head import HeadScene
from rgbd_portrait.data.synth.parameters import (
    Camera,
    DirectionalLight,
    Expression,
    Identity,
    Lighting,
    Pose,
    View,
    sample_camera,
    sample_expression,
    sample_identity,
    sample_lighting,
    sample_pose,
)
from rgbd_portrait.data.synth.preview import contact_sheet, write_contact_sheet
from rgbd_portrait.data.synth.renderer import RenderOutput, RenderSettings, render
from rgbd_portrait.data.synth.speech import SpeechTrack, synthesize_speech
from rgbd_portrait.data.synth.studio import (
    StudioOptions,
    StudioSummary,
    assign_splits,
    render_dataset,
    render_samples,
    still_view,
    studio_identity,
)
from rgbd_portrait.data.synth.talking import TalkingSequence, talking_sequence

__all__ = [
    "Camera",
    "DirectionalLight",
    "Expression",
    "HeadScene",
    "Identity",
    "Lighting",
    "Pose",
    "RenderOutput",
    "RenderSettings",
    "SpeechTrack",
    "StudioOptions",
    "StudioSummary",
    "TalkingSequence",
    "View",
    "assign_splits",
    "contact_sheet",
    "render",
    "render_dataset",
    "render_samples",
    "sample_camera",
    "sample_expression",
    "sample_identity",
    "sample_lighting",
    "sample_pose",
    "still_view",
    "studio_identity",
    "synthesize_speech",
    "talking_sequence",
    "write_contact_sheet",
]
