import pytest
import torch

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.relighting import (
    LIGHT_PRESETS,
    DirectionalLight,
    Lighting,
    estimate_sh_lighting,
    relight,
    resolve_lighting,
    sh_shading,
)
from rgbd_portrait.geometry.shading import linear_to_srgb, shade_sh

SIDE = 64
ALBEDO = torch.tensor([0.8, 0.6, 0.5]).view(3, 1, 1)


def _sphere(side=SIDE):
    """Normals (3, H, W) of a sphere filling an orthographic image, and its mask (H, W)."""
    coordinates = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2.0 - 1.0
    y, x = torch.meshgrid(-coordinates, coordinates, indexing="ij")
    mask = x * x + y * y < 0.98
    z = (1.0 - x * x - y * y).clamp_min(0.0).sqrt()
    normals = torch.where(mask, torch.stack((x, y, z)), torch.zeros(3, side, side))
    return normals, mask


def _lamp_and_ambient(azimuth, elevation):
    """The same lamp, moved: intensity 0.9 plus ambient 0.25 wherever it stands."""
    return Lighting(lamps=(DirectionalLight.from_angles(azimuth, elevation, intensity=0.9),), ambient=0.25)


def _mean_error(first, second, mask):
    return (first - second).abs()[:, mask].mean().item()


def test_estimate_reproduces_an_image_lit_by_an_sh_environment():
    normals, mask = _sphere()
    radiance = torch.tensor([1.8, 0.4, 0.9, -0.3, 0.1, 0.2, -0.1, 0.05, 0.15])
    image = ALBEDO * shade_sh(normals.movedim(0, -1), radiance).unsqueeze(0)
    coefficients = estimate_sh_lighting(image, normals, mask=mask)
    assert coefficients.shape == (9, 3) and coefficients.dtype == image.dtype
    fitted = sh_shading(normals, coefficients)
    assert (fitted - image).abs()[:, mask].max() < 1e-4


@pytest.mark.parametrize(
    "original, target",
    [((-40.0, 20.0), (50.0, -10.0)), ((-30.0, 30.0), (40.0, 10.0)), ((20.0, 40.0), (0.0, 0.0))],
)
def test_relit_sphere_matches_the_exact_render_under_the_new_light(original, target):
    normals, mask = _sphere()
    before = ALBEDO * _lamp_and_ambient(*original).shade(normals)
    truth = ALBEDO * _lamp_and_ambient(*target).shade(normals)
    result = relight(before, normals, _lamp_and_ambient(*target), mask=mask, srgb=False)
    error = _mean_error(result.image, truth, mask)
    baseline = _mean_error(before, truth, mask)  # not relighting at all
    # the 9-term fit cannot follow the lamp's hard terminator, which costs about 0.02–0.03 on average
    assert error < 0.035
    assert error < baseline / 3
    albedo_error = (result.albedo - ALBEDO).abs()[:, mask]
    assert albedo_error.median() < 0.02


def test_srgb_images_are_relit_in_linear_light():
    normals, mask = _sphere()
    original, target = _lamp_and_ambient(-40.0, 20.0), _lamp_and_ambient(50.0, -10.0)
    before = linear_to_srgb(ALBEDO * original.shade(normals))
    truth = linear_to_srgb(ALBEDO * target.shade(normals))
    in_linear = relight(before, normals, target, original_light=original, mask=mask)
    as_if_linear = relight(before, normals, target, original_light=original, mask=mask, srgb=False)
    assert _mean_error(in_linear.image, truth, mask) < 1e-4  # the known light makes it exact
    assert _mean_error(as_if_linear.image, truth, mask) > 0.01  # dividing encoded values is wrong
    assert (in_linear.albedo - linear_to_srgb(ALBEDO)).abs()[:, mask].max() < 1e-4


def test_textured_albedo_survives_relighting():
    normals, mask = _sphere()
    stripes = 1.0 + 0.2 * torch.sign(torch.sin(torch.arange(SIDE, dtype=torch.float32) / 3.0)).view(1, 1, SIDE)
    albedo = (ALBEDO * stripes).expand(3, SIDE, SIDE)
    before = albedo * _lamp_and_ambient(-40.0, 20.0).shade(normals)
    truth = albedo * _lamp_and_ambient(30.0, 0.0).shade(normals)
    result = relight(before, normals, _lamp_and_ambient(30.0, 0.0), mask=mask, srgb=False)
    assert _mean_error(result.image, truth, mask) < 0.04
    assert _mean_error(result.image, truth, mask) < _mean_error(before, truth, mask) / 3
    # the stripes are in the estimated albedo, not in the lighting: its error does not follow them
    ratio = (result.albedo / albedo).mean(dim=0)
    bright = mask & (stripes[0] > 1.0)
    dark = mask & (stripes[0] < 1.0)
    assert ratio[bright].median().item() == pytest.approx(ratio[dark].median().item(), rel=0.02)


def test_albedo_regions_keep_dark_hair_from_bending_the_light():
    # A "head": dark hair over the top third, skin below, lit from the image's left; relit from the right.
    normals, mask = _sphere()
    hair = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    hair[: SIDE // 3] = True
    albedo = torch.where(hair, torch.tensor([0.12, 0.08, 0.06]).view(3, 1, 1), ALBEDO)
    before = albedo * _lamp_and_ambient(-40.0, 20.0).shade(normals)
    truth = albedo * _lamp_and_ambient(50.0, -10.0).shade(normals)
    errors = {}
    for clusters in (1, 4):
        result = relight(
            before, normals, _lamp_and_ambient(50.0, -10.0), mask=mask, srgb=False, albedo_clusters=clusters
        )
        errors[clusters] = _mean_error(result.image, truth, mask)
    # one albedo takes the dark hair for shadow and puts the light below; the regions find it again
    assert errors[4] < errors[1] / 2
    assert errors[4] < 0.04


def test_plane_with_a_known_original_light_is_relit_exactly():
    normal = torch.nn.functional.normalize(torch.tensor([0.3, 0.2, 0.9]), dim=0)
    normals = normal.view(3, 1, 1).expand(3, 16, 16).clone()
    albedo = torch.rand(3, 16, 16) * 0.8 + 0.1
    original = Lighting(lamps=(DirectionalLight.from_angles(-20.0, 10.0, intensity=0.7),), ambient=0.3)
    target = Lighting(
        lamps=(DirectionalLight.from_angles(35.0, 25.0, intensity=0.6, color=(1.0, 0.9, 0.8)),),
        ambient=0.2,
        ambient_color=(0.8, 0.9, 1.0),
    )
    before = albedo * original.shade(normals)
    result = relight(before, normals, target, original_light=original, srgb=False)
    torch.testing.assert_close(result.albedo, albedo, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.image, albedo * target.shade(normals), atol=1e-5, rtol=0)
    assert result.region.all()


def test_estimated_relighting_of_a_plane_keeps_the_image():
    # one normal cannot tell the light's direction: with equal peaks, relighting changes nothing
    normals = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 8, 8).clone()
    image = torch.rand(3, 8, 8) * 0.5 + 0.2
    result = relight(image, normals, "left", srgb=False)
    torch.testing.assert_close(result.image, image, atol=1e-4, rtol=0)


def test_robust_fit_ignores_a_cast_shadow():
    normals, mask = _sphere()
    light = _lamp_and_ambient(-40.0, 20.0)
    unshadowed = ALBEDO * light.shade(normals)
    shadow = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    shadow[:, 26:32] = True  # a vertical bar (a strand of hair, a pole) blocks the lamp on ~12 % of the sphere
    ambient_only = ALBEDO * Lighting(ambient=0.25).shade(normals)
    image = torch.where(shadow, ambient_only, unshadowed)
    lit = mask & ~shadow
    errors = {}
    for robust in (False, True):
        # one albedo region: the shadow must be ignored by the reweighting, not explained as dark albedo
        fitted = sh_shading(normals, estimate_sh_lighting(image, normals, mask=mask, robust=robust, albedo_clusters=1))
        errors[robust] = _mean_error(fitted, unshadowed, lit)
    assert errors[True] < errors[False] / 2
    clean = sh_shading(normals, estimate_sh_lighting(unshadowed, normals, mask=mask))
    assert errors[True] < 1.5 * _mean_error(clean, unshadowed, lit)  # about as good as without the shadow


def test_background_is_kept_and_batches_match_single_images():
    normals, mask = _sphere(32)
    first = torch.rand(3, 32, 32)
    second = ALBEDO * _lamp_and_ambient(10.0, 10.0).shade(normals)
    batch = relight(
        torch.stack((first, second)), normals.expand(2, 3, 32, 32), "studio", mask=mask.expand(2, 32, 32), srgb=False
    )
    assert batch.image.shape == (2, 3, 32, 32)
    for index, image in enumerate((first, second)):
        single = relight(image, normals, "studio", mask=mask, srgb=False)
        torch.testing.assert_close(batch.image[index], single.image, atol=1e-5, rtol=0)
    assert torch.equal(batch.image[0][:, ~mask], first[:, ~mask])
    assert (batch.albedo[:, :, ~mask] == 0).all()
    assert batch.image.min() >= 0 and batch.image.max() <= 1


def test_presets_light_the_side_they_are_named_after():
    normals, mask = _sphere()
    half = SIDE // 2
    for name, lighting in LIGHT_PRESETS.items():
        shading = lighting.shade(normals).mean(dim=0)
        assert 0.8 < shading[mask].max() < 1.1, name  # comparable exposure
        assert torch.equal(resolve_lighting(name.upper()).shade(normals), lighting.shade(normals))
    left, right, top = (LIGHT_PRESETS[name].shade(normals).mean(dim=0) for name in ("left", "right", "top"))
    assert left[:, :half][mask[:, :half]].mean() > left[:, half:][mask[:, half:]].mean() + 0.2
    assert right[:, half:][mask[:, half:]].mean() > right[:, :half][mask[:, :half]].mean() + 0.2
    assert top[:half][mask[:half]].mean() > top[half:][mask[half:]].mean() + 0.2
    rim = LIGHT_PRESETS["rim"].shade(normals).mean(dim=0)
    outline = mask & (normals[2] < 0.3)
    assert rim[outline].mean() > rim[half, half] + 0.2


def test_resolve_lighting_forms():
    normals, _ = _sphere(16)
    lamp = DirectionalLight.from_angles(0.0, 0.0, intensity=0.5)
    with_ambient = resolve_lighting(lamp, ambient=0.1)
    front = normals[:, 8, 8]
    expected = 0.5 * front[2] + 0.1  # the lamp shines along +z
    torch.testing.assert_close(with_ambient.shade(normals)[:, 8, 8], expected.expand(3))
    coefficients = torch.zeros(9)
    coefficients[0] = 0.7 * 2.0 * torch.pi**0.5  # uniform radiance 0.7
    uniform = resolve_lighting(coefficients).shade(normals)
    torch.testing.assert_close(uniform, torch.full_like(uniform, 0.7))
    assert resolve_lighting(torch.zeros(9, 3)).shade(normals).abs().max() == 0
    assert resolve_lighting(with_ambient) is with_ambient
    with pytest.raises(UserInputError, match="light 'disco' is not a preset; choose one of front, left"):
        resolve_lighting("disco")
    with pytest.raises(UserInputError, match=r"\(9,\) or \(9, 3\)"):
        resolve_lighting(torch.zeros(4))
    with pytest.raises(TypeError):
        resolve_lighting(3.0)


def test_nothing_to_relight_is_an_error():
    with pytest.raises(ValueError, match="no pixel"):
        relight(torch.rand(3, 4, 4), torch.zeros(3, 4, 4), "front", srgb=False)
    normals, mask = _sphere(8)
    with pytest.raises(ValueError, match="no pixel"):
        relight(torch.rand(3, 8, 8), normals, "front", mask=torch.zeros_like(mask), srgb=False)
