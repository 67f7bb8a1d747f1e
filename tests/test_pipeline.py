"""The inference pipeline end to end with a tiny random model saved to and loaded from a folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.data.depth_normalization import normalize_depth, to_unit_range
from rgbd_portrait.data.image_io import fit_square
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import split_modalities
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.pipelines import RGBDPortraitOutput, RGBDPortraitPipeline, RGBDRelightingOutput

SIDE = 16  # the tiny model's resolution
FAST = {"center_on_face": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model = RGBDPortraitModel.from_config(tiny_model_section(ensemble_size=3))
    # A fresh backbone ignores the known and mask channels (zero weights); make them matter, as after training.
    with torch.no_grad():
        conv_in = model.backbone.conv_in.weight
        conv_in[:, 2 * model.latent_channels :] = 0.1 * torch.randn_like(conv_in[:, 2 * model.latent_channels :])
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(model_dir):
    pipeline = RGBDPortraitPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def reference_net_calls(pipe):
    calls = []
    handle = pipe.model.reference_net.register_forward_pre_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def _image(height=20, width=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _depth(height=20, width=30):
    rows, columns = np.mgrid[0:height, 0:width]
    return (1.0 + 0.02 * rows + 0.01 * columns).astype(np.float32)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _check_normals(normals: np.ndarray):
    length = np.linalg.norm(normals, axis=-1)
    assert np.all((np.abs(length - 1) < 1e-4) | (length == 0))


def test_generate_returns_rgb_depth_normals_latents_in_range(pipe, reference_net_calls):
    out = pipe.generate(_image(), num_samples=2, guidance_scale=2.0, generator=_generator(), output_type="np", **FAST)
    assert isinstance(out, RGBDPortraitOutput)
    assert out.rgb.shape == (2, SIDE, SIDE, 3) and out.depth.shape == (2, SIDE, SIDE)
    assert out.normals.shape == (2, SIDE, SIDE, 3) and out.mask.all() and out.uncertainty is None
    assert out.latents.shape == (2, 8, SIDE // 2, SIDE // 2)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1 and out.depth.min() >= 0 and out.depth.max() <= 1
    _check_normals(out.normals)
    # guidance doubles the batch and two samples share the reference: still one reference-net run
    assert len(reference_net_calls) == 1


def test_seed_makes_results_reproducible_and_output_types_agree(pipe):
    first = pipe.generate(_image(), generator=_generator(3), output_type="pt", **FAST)
    again = pipe.generate(_image(), generator=_generator(3), output_type="pt", **FAST)
    other = pipe.generate(_image(), generator=_generator(4), output_type="pt", **FAST)
    assert torch.equal(first.latents, again.latents)
    assert not torch.equal(first.latents, other.latents)
    assert first.rgb.shape == (1, 3, SIDE, SIDE) and first.depth.shape == (1, 1, SIDE, SIDE)
    assert first.mask.dtype == torch.bool

    pil = pipe.generate(_image(), generator=_generator(3), output_type="pil", **FAST)
    assert pil.rgb[0].mode == "RGB" and pil.depth[0].mode == "I;16" and pil.mask[0].mode == "L"
    expected = np.round(first.depth[0, 0].numpy() * 65535)
    assert np.abs(np.asarray(pil.depth[0], dtype=np.float64) - expected).max() <= 1

    rgb, depth, uncertainty, normals, mask, latents = pipe.generate(
        _image(), generator=_generator(3), output_type="pt", return_dict=False, **FAST
    )
    assert torch.equal(latents, first.latents) and uncertainty is None and torch.equal(depth, first.depth)


def test_predict_depth_ensembles_once_per_call_and_maps_back(pipe, reference_net_calls):
    images = [_image(20, 30, seed=1), _image(24, 18, seed=2)]
    out = pipe.predict_depth(images, output_type="np", match_input_size=True, generator=_generator(), **FAST)
    assert len(reference_net_calls) == 1  # 2 images × 3 ensemble members
    assert [depth.shape for depth in out.depth] == [(20, 30), (24, 18)]
    assert [rgb.shape for rgb in out.rgb] == [(20, 30, 3), (24, 18, 3)]
    np.testing.assert_allclose(out.rgb[0], np.asarray(images[0], dtype=np.float32) / 255, atol=1e-6)
    # the centre crop of a 20×30 image leaves 5 columns on each side unseen: off the mask, far
    assert not out.mask[0][:, :5].any() and out.mask[0][:, 5:25].all() and (out.depth[0][:, :5] == 1).all()
    assert out.uncertainty[0].shape == (20, 30) and (out.uncertainty[0] >= 0).all()
    assert out.depth[0].min() >= 0 and out.depth[0].max() <= 1
    assert out.latents.shape[0] == 2
    _check_normals(out.normals[0])


def test_the_model_names_the_default_fit(pipe, monkeypatch):
    image = _image(20, 30, seed=1)
    cropped = pipe.predict_depth(image, output_type="np", match_input_size=True, generator=_generator(), **FAST)
    monkeypatch.setattr(pipe.model.settings, "fit", "pad")
    padded = pipe.predict_depth(image, output_type="np", match_input_size=True, generator=_generator(), **FAST)
    assert not cropped.mask[0][:, :5].any() and padded.mask[0].all()  # the padded square covers every pixel
    explicit = pipe.predict_depth(
        image, output_type="np", match_input_size=True, generator=_generator(), fit="crop", **FAST
    )
    np.testing.assert_array_equal(explicit.depth[0], cropped.depth[0])


def test_every_second_ensemble_member_sees_the_mirror_image(pipe, monkeypatch):
    encoded, member_latents = [], []
    encode, sample = pipe.model.codec.encode_rgb, pipe._sample

    def encode_spy(rgb):
        encoded.append(rgb.clone())
        return encode(rgb)

    def sample_spy(**options):
        member_latents.append(options["known_rgb_latents"].clone())
        return sample(**options)

    # Whatever the latents, each member decodes to the same depth, rising to the right and not affine in the
    # column (a mirrored ramp would be one after alignment): mirrored back, the pair is symmetric.
    ramp = (torch.linspace(0.0, 1.0, SIDE) ** 2 * 2.0 - 1.0).expand(1, 1, SIDE, SIDE)
    monkeypatch.setattr(pipe.model.codec, "encode_rgb", encode_spy)
    monkeypatch.setattr(pipe, "_sample", sample_spy)
    monkeypatch.setattr(pipe.model.codec, "decode_depth", lambda latents: ramp.expand(len(latents), -1, -1, -1))
    square = _image(SIDE, SIDE)
    out = pipe.predict_depth([square, _image(SIDE, SIDE, seed=3)], ensemble_size=2, output_type="pt", **FAST)
    # One encoding for the whole call: the two images, then their mirror images; the reference reuses the first two.
    assert len(encoded) == 1
    views = encoded[0]
    assert views.shape == (4, 3, SIDE, SIDE)
    torch.testing.assert_close(views[2], views[0].flip(-1))
    torch.testing.assert_close(views[3], views[1].flip(-1))
    assert not torch.equal(views[0], views[1])
    latents = encode(views)
    torch.testing.assert_close(member_latents[0], latents[[0, 2, 1, 3]])
    depth = out.depth[0][0]
    torch.testing.assert_close(depth, depth.flip(-1), atol=1e-5, rtol=0)
    assert depth.max() - depth.min() > 0.5 and out.uncertainty[0].max() > 0.05


def test_image_to_depth_does_not_depend_on_the_place_in_the_batch(pipe):
    images = [_image(seed=1), _image(seed=2)]
    for members in (1, 3):
        together = pipe.predict_depth(
            images, ensemble_size=members, generator=[_generator(1), _generator(2)], output_type="pt", **FAST
        )
        alone = pipe.predict_depth(images[1], ensemble_size=members, generator=_generator(2), output_type="pt", **FAST)
        torch.testing.assert_close(together.depth[1:], alone.depth, atol=1e-5, rtol=0)


def test_channel_inpainting_and_training_free_variants_condition_differently(pipe, monkeypatch):
    seen_masks = []
    original = pipe.model.denoise

    def spy(noisy, timesteps, **options):
        seen_masks.append(options["masks"].clone())
        return original(noisy, timesteps, **options)

    monkeypatch.setattr(pipe.model, "denoise", spy)
    image = _image()
    channels = pipe.predict_depth(image, ensemble_size=1, generator=_generator(), output_type="pt", **FAST)
    trained_masks = seen_masks[:]
    seen_masks.clear()
    free = pipe.predict_depth(
        image, ensemble_size=1, training_free=True, generator=_generator(), output_type="pt", **FAST
    )
    assert len(trained_masks) == pipe.model.settings.depth_steps
    assert all(masks[:, 0].eq(1).all() and masks[:, 1].eq(0).all() for masks in trained_masks)  # RGB known
    assert all(masks.eq(0).all() for masks in seen_masks)  # joint task
    assert not torch.equal(channels.depth, free.depth)
    # both end on the known RGB latents exactly: the encoding of the centre crop
    pixels, _ = fit_square(np.asarray(image, dtype=np.float32) / 255, SIDE)
    with torch.no_grad():
        expected = pipe.model.codec.encode_rgb(torch.from_numpy(pixels).permute(2, 0, 1)[None] * 2 - 1)
    for out in (channels, free):
        torch.testing.assert_close(split_modalities(out.latents)[0], expected)


def test_render_keeps_the_input_depth_and_its_mask(pipe, reference_net_calls):
    depth = _depth()
    depth[:3] = np.nan  # invalid rows
    mapped = pipe.render(
        depth, _image(), num_samples=2, generator=_generator(), output_type="np", match_input_size=True, **FAST
    )
    assert len(reference_net_calls) == 1
    assert len(mapped.rgb) == 2 and mapped.rgb[0].shape == (20, 30, 3)
    assert not mapped.mask[0][:3].any() and mapped.mask[0][3:, 5:25].all() and not mapped.mask[0][:, :5].any()

    out = pipe.render(depth, _image(), generator=_generator(), output_type="pt", **FAST)
    fitted = torch.from_numpy(fit_square(np.nan_to_num(depth), SIDE, interpolation="nearest")[0])[None, None]
    valid = torch.from_numpy(fit_square(np.isfinite(depth), SIDE, interpolation="nearest")[0])[None, None]
    normalized, _, _ = normalize_depth(fitted, valid)
    torch.testing.assert_close(out.depth, to_unit_range(normalized))
    assert torch.equal(out.mask, valid)


def test_training_free_render_and_partial_generation_run(pipe):
    free = pipe.render(_depth(), _image(), training_free=True, generator=_generator(), output_type="np", **FAST)
    assert free.rgb.shape == (1, SIDE, SIDE, 3)
    mask = np.zeros((20, 30), dtype=bool)
    mask[:, :15] = True
    known = _image(seed=5)
    partial = pipe.generate(
        _image(), known_image=known, known_image_mask=mask, generator=_generator(), output_type="np", **FAST
    )
    # the left half of the centre crop (columns 5-14 of 30 → 0-7 of 16) is the known image's
    expected, _ = fit_square(np.asarray(known, dtype=np.float32) / 255, SIDE)
    np.testing.assert_allclose(partial.rgb[0][:, :7], expected[:, :7], atol=1e-6)
    assert np.abs(partial.rgb[0][:, 9:] - expected[:, 9:]).mean() > 0.05


def test_relight_with_given_and_predicted_depth(pipe, reference_net_calls):
    given = pipe.relight(_image(), "left", depth=_depth(), output_type="np", match_input_size=True, **FAST)
    assert isinstance(given, RGBDRelightingOutput) and len(reference_net_calls) == 0
    assert given.rgb[0].shape == given.albedo[0].shape == given.shading[0].shape == (20, 30, 3)
    assert given.rgb[0].min() >= 0 and given.rgb[0].max() <= 1 and given.latents is None

    predicted = pipe.relight(_image(), "studio", regenerate=True, generator=_generator(), output_type="np", **FAST)
    # depth prediction and regeneration share the one reference-net run
    assert len(reference_net_calls) == 1
    assert predicted.rgb.shape == (1, SIDE, SIDE, 3) and predicted.uncertainty.shape == (1, SIDE, SIDE)
    assert predicted.latents.shape == (1, 8, SIDE // 2, SIDE // 2)


def test_image_to_depth_without_self_reference_skips_the_reference_net(pipe, reference_net_calls, monkeypatch):
    image = _image(seed=3)
    referenced = pipe.predict_depth(image, generator=_generator(), output_type="np", **FAST)
    assert len(reference_net_calls) == 1
    unreferenced = pipe.predict_depth(image, self_reference=False, generator=_generator(), output_type="np", **FAST)
    assert len(reference_net_calls) == 1
    assert np.abs(unreferenced.depth - referenced.depth).max() > 1e-4
    # The model's setting is the default, for image→depth and the depth relighting predicts.
    monkeypatch.setattr(pipe.model.settings, "depth_self_reference", False)
    by_default = pipe.predict_depth(image, generator=_generator(), output_type="np", **FAST)
    np.testing.assert_array_equal(by_default.depth, unreferenced.depth)
    pipe.relight(image, "left", generator=_generator(), output_type="np", **FAST)
    assert len(reference_net_calls) == 1
    # Regeneration still reads the input as its reference.
    pipe.relight(image, "left", regenerate=True, generator=_generator(), output_type="np", **FAST)
    assert len(reference_net_calls) == 2
    with pytest.raises(UserInputError, match="give reference or self_reference, not both"):
        pipe.predict_depth(image, reference=image, self_reference=True, **FAST)


def test_cpu_offload_gives_the_same_result(model_dir):
    plain = RGBDPortraitPipeline.from_pretrained(model_dir)
    offloaded = RGBDPortraitPipeline.from_pretrained(model_dir)
    offloaded.enable_model_cpu_offload("cpu")
    for pipeline in (plain, offloaded):
        pipeline.set_progress_bar_config(disable=True)
    expected = plain.generate(_image(), generator=_generator(), output_type="pt", **FAST)
    result = offloaded.generate(_image(), generator=_generator(), output_type="pt", **FAST)
    torch.testing.assert_close(result.latents, expected.latents)


def test_inputs_in_any_form_and_mode(pipe):
    grey16 = Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    rgba = _image().convert("RGBA")
    tensor = torch.rand(2, 3, 20, 20)
    out = pipe.predict_depth([grey16, rgba, *tensor], ensemble_size=1, output_type="np", **FAST)
    assert out.depth.shape == (4, SIDE, SIDE)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda pipe: pipe.predict_depth(Image.new("RGB", (1, 1)), **FAST), r"image\[0\]: image is 1×1 pixels"),
        (lambda pipe: pipe.predict_depth(np.zeros((0, 4, 3)), **FAST), r"image\[0\]: image is 4×0 pixels"),
        (lambda pipe: pipe.render(np.full((8, 8), np.nan), _image(), **FAST), r"depth\[0\]: depth has no finite"),
        (
            lambda pipe: pipe.render(_depth(), _image(), mask=np.zeros((20, 30), bool), **FAST),
            r"depth\[0\] with mask mask\[0\]: depth has no valid pixels",
        ),
        (
            lambda pipe: pipe.render(_depth(), _image(), mask=np.ones((10, 10), bool), **FAST),
            r"mask\[0\] \(10×10\) does not match the size of depth\[0\] \(30×20\)",
        ),
        (
            lambda pipe: pipe.relight(_image(), "front", depth=_depth(10, 10), **FAST),
            r"depth\[0\] \(10×10\) does not match the size of image\[0\] \(30×20\)",
        ),
        (lambda pipe: pipe.relight(_image(), "disco", **FAST), "light 'disco' is not a preset"),
        (lambda pipe: pipe.generate(_image(), output_type="jpg", **FAST), "output_type: 'jpg'"),
        (lambda pipe: pipe.generate(_image(), guidance_scale=0.5, **FAST), "guidance_scale"),
        (lambda pipe: pipe.generate(_image(), resolution=15, **FAST), "resolution: 15 is not a multiple"),
        (lambda pipe: pipe.predict_depth(_image(), ensemble_size=0, **FAST), "ensemble_size: must be a positive"),
        (
            lambda pipe: pipe.predict_depth(_image(), generator=[_generator()] * 2, **FAST),
            "generator: 2 generators for 1 inputs",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(pipe, call, message):
    with pytest.raises(UserInputError, match=message) as error:
        call(pipe)
    assert "\n" not in str(error.value)


def test_bad_files_are_named(pipe, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserInputError, match=f"{broken}: cannot read image"):
        pipe.predict_depth(str(broken), **FAST)
    depth_file = tmp_path / "depth.npy"
    np.save(depth_file, np.full((20, 30), np.inf, dtype=np.float32))
    with pytest.raises(UserInputError, match=f"{depth_file}: depth has no finite values"):
        pipe.render(str(depth_file), _image(), **FAST)
    with pytest.raises(UserInputError, match="model folder not found"):
        RGBDPortraitPipeline.from_pretrained(tmp_path / "missing")
