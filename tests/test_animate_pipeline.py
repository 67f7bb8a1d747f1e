"""Animation with a tiny random talking-head model: windows, motion frames, videos with audio, bad inputs."""

import importlib.util
import json
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from rgbd_portrait.cli.main import main
from rgbd_portrait.data.audio import LogMelFeatures
from rgbd_portrait.data.synth.speech import synthesize_speech
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.motion import MotionLayers
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.pipelines import RGBDPortraitPipeline, animation_export
from rgbd_portrait.pipelines.animate import animate, paste_generated_region, prepare_animation
from rgbd_portrait.pipelines.animation_export import VIDEO_FILES, run_animate

SIDE = 16
WINDOW = 6
MOTION_FRAMES = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("animate")
    torch.manual_seed(0)
    model = RGBDPortraitModel.from_config(tiny_model_section(resolution=SIDE, default_steps=1))
    model.save_pretrained(folder / "image")
    motion = MotionLayers.for_backbone(
        model.backbone,
        audio_features=LogMelFeatures(n_mels=8),
        num_attention_heads=4,
        audio_token_dim=16,
        max_frames=8,
        window_frames=WINDOW,
        motion_frames=MOTION_FRAMES,
    )
    model.add_motion_layers(motion)
    model.save_pretrained(folder / "talking")
    speech = synthesize_speech(np.random.default_rng(0), seconds=0.56, pitch_hz=130.0)  # 14 frames at 25 fps
    soundfile.write(folder / "speech.wav", np.stack([speech.audio, speech.audio], axis=1), 16000)
    soundfile.write(folder / "silence.wav", np.zeros(4000, dtype=np.float32), 16000)
    portrait = np.random.default_rng(1).random((24, 20, 3))
    Image.fromarray((portrait * 255).astype(np.uint8)).save(folder / "portrait.png")
    return folder


@pytest.fixture(scope="module")
def pipeline(files):
    pipe = RGBDPortraitPipeline.from_pretrained(files / "talking")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _quietly(function, *args, **kwargs):
    """Run without the expected warnings (the random portrait has no face)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args, **kwargs)


def _animate_recording_backbone(pipeline, files, **options):
    """`animate` on the test portrait and speech, quietly, with the backbone's input of every call recorded."""
    inputs = []
    hook = pipeline.model.backbone.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    try:
        output = _quietly(animate, pipeline, files / "portrait.png", files / "speech.wav", **options)
    finally:
        hook.remove()
    return output, inputs


def _reference_rgb_latents(pipeline, files):
    """The RGB latents (1, C, h, w) of the test portrait fitted as animation fits its reference."""
    images, _ = pipeline._read_image_with_masks(files / "portrait.png", None)
    return pipeline._encode_rgb(pipeline._fit_images(images, SIDE, fit=None, center_on_face=True)[1])


def test_windows_cover_long_audio_with_one_reference_pass_and_bounded_batches(files, pipeline):
    model = pipeline.model
    reference_runs, backbone_inputs = [], []
    hooks = [
        model.reference_net.register_forward_pre_hook(lambda module, args: reference_runs.append(1)),
        model.backbone.register_forward_pre_hook(lambda module, args: backbone_inputs.append(args[0].detach())),
    ]
    try:
        output = _quietly(
            animate,
            pipeline,
            files / "portrait.png",
            files / "speech.wav",
            guidance_scale=2.0,
            num_inference_steps=1,
            start_from_reference=False,  # the first window generated whole (the default's start is tested below)
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        for hook in hooks:
            hook.remove()
    frames = 14
    assert output.rgb.shape == (frames, SIDE, SIDE, 3) and output.depth.shape == (frames, SIDE, SIDE)
    assert output.depth.min() >= 0.0 and output.depth.max() <= 1.0
    assert len(reference_runs) == 1
    # 14 frames: 6 new, then 4 new after 2 motion frames, twice; one step per window.
    assert len(backbone_inputs) == 3
    # Memory is bounded by the window: no backbone call holds more than a window (doubled for guidance).
    assert max(batch.shape[0] for batch in backbone_inputs) == 2 * WINDOW
    # Motion frames: every window after the first starts with known frames of both modalities (masks 1).
    masks = [batch[:, -2:].amax(dim=(2, 3)) for batch in backbone_inputs]
    assert not masks[0].any()
    for window_masks in masks[1:]:
        conditional = window_masks[window_masks.shape[0] // 2 :]
        assert conditional[:MOTION_FRAMES].eq(1).all() and not conditional[MOTION_FRAMES:].any()


def test_animation_is_reproducible(files, pipeline):
    def run(function):
        return _quietly(
            function,
            files / "portrait.png",
            files / "speech.wav",
            seconds=0.2,
            guidance_scale=1.0,
            output_type="pt",
            generator=torch.Generator().manual_seed(3),
        )

    # the pipeline's method and the module's function are the same animation
    first, second = run(lambda *args, **options: animate(pipeline, *args, **options)), run(pipeline.animate)
    assert first.rgb.shape == (5, 3, SIDE, SIDE)
    assert torch.equal(first.rgb, second.rgb) and torch.equal(first.depth, second.depth)


def test_by_default_the_reference_is_the_first_windows_known_frame(files, pipeline):
    model = pipeline.model
    options = dict(seconds=0.32, guidance_scale=1.0, num_inference_steps=1, output_type="pt")
    anchored, backbone_inputs = _animate_recording_backbone(pipeline, files, generator=torch.Generator(), **options)
    plain = _quietly(
        animate,
        pipeline,
        files / "portrait.png",
        files / "speech.wav",
        start_from_reference=False,
        generator=torch.Generator(),
        **options,
    )
    # 8 frames, as without: image→depth of the reference (its steps), then 5 new frames after it, then 3.
    assert anchored.rgb.shape == plain.rgb.shape == (8, 3, SIDE, SIDE)
    depth_steps = model.settings.depth_steps
    assert len(backbone_inputs) == depth_steps + 2 and backbone_inputs[0].shape[0] == 1
    first_window = backbone_inputs[depth_steps]
    channels = model.latent_channels
    assert first_window.shape[0] == WINDOW
    masks = first_window[:, -2:].amax(dim=(2, 3))
    assert masks[0].eq(1).all() and not masks[1:].any()
    known_rgb = first_window[0, 2 * channels : 3 * channels]
    assert torch.allclose(known_rgb, _reference_rgb_latents(pipeline, files)[0], atol=1e-5)
    assert not torch.equal(anchored.rgb, plain.rgb)


def _video_info(path):
    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    frames.close()
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0], meta


def test_cli_writes_videos_with_audio_depth_stack_and_point_clouds(files, capsys):
    out = files / "result"
    arguments = ["animate", "--reference", str(files / "portrait.png"), "--audio", str(files / "speech.wav")]
    arguments += ["--out", str(out), "--model", str(files / "talking"), "--seconds", "0.4", "--window", "5"]
    arguments += ["--guidance", "1", "--point-clouds", "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(arguments) == 0
    assert capsys.readouterr().out.strip() == str(out)
    for name in VIDEO_FILES:
        count, meta = _video_info(out / name)
        assert count == 10, name
        assert "audio_codec" in meta, name
        assert tuple(meta["size"]) == ((2 * SIDE, SIDE) if name == "side_by_side.mp4" else (SIDE, SIDE))
    depth = np.load(out / "depth.npy", allow_pickle=False)
    assert depth.shape == (10, SIDE, SIDE) and depth.dtype == np.float32
    assert len(list((out / "point_clouds").glob("*.ply"))) == 10
    record = json.loads((out / "result.json").read_text())
    assert record["frames"] == 10 and record["fps"] == 25.0
    assert record["mouth_only"] is False  # the tiny model's default: whole frames
    assert not [path for path in files.iterdir() if path.name.startswith(".result")]
    # The existing result is replaced only when asked.
    assert main(arguments) == 2
    assert "already exists" in capsys.readouterr().err


def test_silent_audio_and_a_faceless_reference_are_animated_with_warnings(files, pipeline):
    with pytest.warns(UserWarning) as caught:
        output = animate(pipeline, files / "portrait.png", files / "silence.wav", guidance_scale=1.0)
    messages = " ".join(str(warning.message) for warning in caught)
    assert "silent" in messages
    if importlib.util.find_spec("mediapipe") is not None:  # without MediaPipe a face cannot be looked for
        assert "no face" in messages
    assert output.rgb.shape[0] == 6


def test_bad_inputs_fail_before_loading_and_leave_nothing(files, pipeline, tmp_path, monkeypatch):
    def no_model():
        raise AssertionError("the model must not load for bad inputs")

    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC not really" * 10)
    with pytest.raises(UserInputError, match="not found"):
        run_animate(no_model, files / "portrait.png", tmp_path / "missing.wav", tmp_path / "out")
    for bad in (empty, corrupt):
        with pytest.raises(UserInputError, match=bad.name):
            run_animate(pipeline, files / "portrait.png", bad, tmp_path / "out")
    with pytest.raises(UserInputError, match="shorter than one frame"):
        run_animate(pipeline, files / "portrait.png", files / "speech.wav", tmp_path / "out", seconds=0.01)
    image_model = RGBDPortraitPipeline.from_pretrained(files / "image")
    with pytest.raises(UserInputError, match="no motion layers"):
        run_animate(image_model, files / "portrait.png", files / "speech.wav", tmp_path / "out")

    # A failure after some frames were written leaves neither the result folder nor a temporary one.
    windows_done = []

    def failing_after_one_window(*args, **kwargs):
        for chunk in real_iter(*args, **kwargs):
            windows_done.append(chunk)
            yield chunk
            raise RuntimeError("interrupted")

    real_iter = animation_export.iter_animation
    monkeypatch.setattr(animation_export, "iter_animation", failing_after_one_window)
    with pytest.raises(RuntimeError, match="interrupted"):
        _quietly(
            run_animate, pipeline, files / "portrait.png", files / "speech.wav", tmp_path / "out", guidance_scale=1.0
        )
    assert windows_done
    assert not list(tmp_path.glob("*out*"))


def test_mouth_only_keeps_the_photo_outside_the_mouth_box(files, pipeline, monkeypatch):
    from rgbd_portrait.data.face_regions import JAW_OUTLINE, SUBNASALE

    # A face mesh whose mouth box (rows 10–12.5, columns 4.5–10.5 px) covers latent rows 5–6, columns 2–5.
    landmarks = np.zeros((478, 3))
    landmarks[list(JAW_OUTLINE), :2] = [[5.0, 12.0], [10.0, 12.0]] * (len(JAW_OUTLINE) // 2) + [[7.5, 12.0]]
    landmarks[SUBNASALE, :2] = [7.5, 10.0]
    monkeypatch.setattr(pipeline.face_centres, "landmarks", lambda pixels: landmarks)
    output, backbone_inputs = _animate_recording_backbone(
        pipeline,
        files,
        seconds=0.32,
        guidance_scale=1.0,
        num_inference_steps=1,
        mouth_only=True,
        output_type="pt",
        generator=torch.Generator(),
    )
    assert output.rgb.shape == (8, 3, SIDE, SIDE)
    channels = pipeline.model.latent_channels
    mouth = torch.zeros(SIDE // 2, SIDE // 2, dtype=torch.bool)
    mouth[5:7, 2:6] = True
    reference_latents = None
    for window in backbone_inputs[pipeline.model.settings.depth_steps :]:
        masks = window[:, -2:]
        # The known frame(s) from before are whole; every generated frame is known outside the mouth only.
        generated = masks.amin(dim=(1, 2, 3)) == 0
        assert (masks[generated][:, :, mouth] == 0).all() and (masks[generated][:, :, ~mouth] == 1).all()
        known = window[generated, 2 * channels : 4 * channels]
        reference_latents = known[:1] if reference_latents is None else reference_latents
        assert torch.allclose(known[:, :, ~mouth], reference_latents[:, :, ~mouth].expand_as(known[:, :, ~mouth]))
    # The reference's image latents are what stays still.
    rgb_latents = _reference_rgb_latents(pipeline, files)
    assert torch.allclose(reference_latents[:, :channels, ~mouth], rgb_latents[:, :, ~mouth], atol=1e-5)
    # Away from the mouth (rows 0–5 px, beyond the feather) every frame is the photo itself, not its decoding.
    photo = prepare_animation(pipeline, files / "portrait.png", files / "speech.wav").reference
    assert torch.equal(output.rgb[:, :, :6], photo[:, :6].expand(8, -1, -1, -1))

    monkeypatch.setattr(pipeline.face_centres, "landmarks", lambda pixels: None)
    with pytest.raises(UserInputError, match="mouth_only: no face found"):
        _quietly(animate, pipeline, files / "portrait.png", files / "speech.wav", seconds=0.2, mouth_only=True)


def test_a_model_trained_for_the_mouth_animates_it_by_default_and_falls_back_without_a_face(files, monkeypatch):
    pipe = RGBDPortraitPipeline.from_pretrained(files / "talking")
    pipe.set_progress_bar_config(disable=True)
    pipe.model.motion.register_to_config(mouth_only=True)
    asked = []
    monkeypatch.setattr(pipe.face_centres, "landmarks", lambda pixels: asked.append(1))  # finds no face
    options = dict(seconds=0.2, guidance_scale=1.0, num_inference_steps=1, generator=torch.Generator())
    with pytest.warns(UserWarning, match="animating whole frames"):
        animate(pipe, files / "portrait.png", files / "speech.wav", **options)
    assert asked
    asked.clear()
    _quietly(animate, pipe, files / "portrait.png", files / "speech.wav", mouth_only=False, **options)
    assert not asked  # whole frames asked for: no face mesh looked for


def test_mouth_guidance_steers_the_generated_mouth_to_the_audio_s_opening(files, monkeypatch):
    from rgbd_portrait.data.face_regions import JAW_OUTLINE, SUBNASALE
    from rgbd_portrait.models.mouth_guide import MouthGuide
    from rgbd_portrait.pipelines import animate as animate_module

    pipe = RGBDPortraitPipeline.from_pretrained(files / "talking")
    pipe.set_progress_bar_config(disable=True)
    landmarks = np.zeros((478, 3))
    landmarks[list(JAW_OUTLINE), :2] = [[5.0, 12.0], [10.0, 12.0]] * (len(JAW_OUTLINE) // 2) + [[7.5, 12.0]]
    landmarks[SUBNASALE, :2] = [7.5, 10.0]
    monkeypatch.setattr(pipe.face_centres, "landmarks", lambda pixels: landmarks)
    windows = []
    sample_clip = animate_module.sample_clip

    def recording(*args, **kwargs):
        latents = sample_clip(*args, **kwargs)
        windows.append((kwargs, latents))
        return latents

    monkeypatch.setattr(animate_module, "sample_clip", recording)
    options = dict(seconds=0.4, guidance_scale=1.0, num_inference_steps=1, mouth_only=True, output_type="pt")
    speak = lambda **extra: animate(
        pipe,
        files / "portrait.png",
        files / "speech.wav",
        generator=torch.Generator().manual_seed(0),
        **options,
        **extra,
    )
    with pytest.raises(UserInputError, match="mouth guide"):
        speak(mouth_guidance=1.0)

    motion = pipe.model.motion
    channels, cells = 2 * pipe.model.latent_channels, SIDE // 2
    guide = MouthGuide(motion.audio_window, motion.config.audio_feature_dim, (channels, cells, cells))
    torch.manual_seed(0)
    for buffer in (guide.audio_weights, guide.latent_readout, guide.latent_direction):
        buffer.normal_()
    guide.latent_direction.copy_(guide.latent_readout)  # so that steering moves the read-out
    motion.add_mouth_guide(guide)
    speak(mouth_guidance=0.0)
    unguided, windows[:] = list(windows), []
    speak()  # the model's default scale
    for (kwargs, latents), (_, plain) in zip(windows, unguided):
        given = 0 if kwargs["motion_latents"] is None else len(kwargs["motion_latents"])
        targets, generated = kwargs["mouth_targets"], ~kwargs["still_mask"]
        assert given and targets.isfinite().all()  # every window continues from known frames
        # One trailing step ends on the steered prediction: the mouth's read-outs are the targets, at the level
        # the known frames' read-outs set; the rest is the photo.
        level = guide.level_of(kwargs["motion_latents"], targets[:given], generated)
        read = guide.read_opening(latents[given:], generated)
        assert torch.allclose(read, targets[given:] + level, rtol=1e-3, atol=1e-3)
        assert torch.allclose(latents[:given], kwargs["motion_latents"])
        assert torch.equal(latents[given:, :, ~generated], plain[given:, :, ~generated])
    # The guidance scales the openings the mouth is steered to (the model's default, 3, three times those of 1).
    scale = motion.config.mouth_guidance
    assert scale == 3.0
    scaled, windows[:] = [kwargs["mouth_targets"] for kwargs, _ in windows], []
    speak(mouth_guidance=1.0)
    for (kwargs, _), targets in zip(windows, scaled):
        assert torch.allclose(scale * kwargs["mouth_targets"], targets)
    with pytest.raises(UserInputError, match="mouth-only"):
        animate(pipe, files / "portrait.png", files / "speech.wav", seconds=0.2, mouth_only=False, mouth_guidance=1.0)


def test_pasting_generated_pixels_into_the_photo_undoes_the_codecs_colour_shift():
    photo = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    cells = torch.zeros(8, 8, dtype=torch.bool)
    cells[5:7, 2:6] = True  # pixels: rows 10–13, columns 4–11
    # The decoder maps every colour alike (c → 0.8 c + 0.15). The second frame opens a dark mouth in the cells
    # and darkens the whole frame a little too; the third changes the cells by no more than codec noise.
    decoded_photo = 0.8 * photo + 0.15
    frames = decoded_photo.expand(3, -1, -1, -1).clone()
    frames[1] -= 0.1
    frames[1, :, 10:14, 4:12] -= 0.3
    frames[2, :, 10:14, 4:12] -= 0.02
    pasted = paste_generated_region(frames, decoded_photo, photo, cells)
    assert torch.equal(pasted[0], photo)  # nothing changed: the photo, not its decoding
    assert torch.equal(pasted[1, :, :6], photo[:, :6])  # beyond the feather
    # Where the mouth opened, the frame's pixels in the photo's colours: 0.3 darker in the decoder's is 0.375 darker.
    torch.testing.assert_close(pasted[1, :, 10:14, 4:12], (photo[:, 10:14, 4:12] - 0.375).clamp(0, 1))
    torch.testing.assert_close(pasted[2], photo, atol=0.01, rtol=0)


def test_the_pasted_mouth_takes_the_colours_of_the_skin_around_it_not_of_the_backdrop():
    photo = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    cells = torch.zeros(16, 16, dtype=torch.bool)
    cells[10:13, 5:11] = True  # pixels: rows 20–25, columns 10–21
    # Around the mouth the decoder maps c → 0.8 c + 0.15; on the backdrop (the top rows, beyond the colour ring)
    # it turns colours another way, as a codec turns a teal backdrop blue. The second frame opens a dark mouth and
    # is a little darker all over (so the whole feather shows it).
    decoded_photo = 0.8 * photo + 0.15
    decoded_photo[:, :8] = 0.5 * photo[[2, 0, 1], :8] + 0.4
    frames = decoded_photo.expand(2, -1, -1, -1).clone()
    frames[1] -= 0.1
    frames[1, :, 20:26, 10:22] -= 0.3
    pasted = paste_generated_region(frames, decoded_photo, photo, cells)
    torch.testing.assert_close(pasted[1, :, 20:26, 10:22], (photo[:, 20:26, 10:22] - 0.375).clamp(0, 1))
