import math

import torch

from rgbd_portrait.geometry.shading import (
    direction_from_angles,
    sh_basis,
    shade_directional,
    shade_sh,
)


def _sphere_normals(count=2000):
    normals = torch.nn.functional.normalize(torch.randn(count, 3), dim=-1)
    return normals


def test_uniform_environment_shades_every_normal_with_its_radiance():
    coefficients = torch.zeros(9)
    coefficients[0] = 0.7 * 2.0 * math.sqrt(math.pi)  # radiance 0.7 projected on Y00
    torch.testing.assert_close(shade_sh(_sphere_normals(), coefficients), torch.full((2000,), 0.7))


def test_basis_is_orthonormal_on_the_sphere():
    normals = _sphere_normals(200_000)
    basis = sh_basis(normals)
    gram = basis.T @ basis * (4.0 * math.pi / normals.shape[0])
    torch.testing.assert_close(gram, torch.eye(9), atol=0.03, rtol=0)


def test_sh_of_a_directional_light_approximates_lambert():
    direction = direction_from_angles(30.0, 20.0)
    coefficients = math.pi * sh_basis(direction)  # a delta light whose normal-incidence shading is 1
    normals = _sphere_normals()
    error = shade_sh(normals, coefficients) - shade_directional(normals, direction)
    assert error.abs().max() < 0.1  # the known accuracy of a 9-term clamped-cosine approximation


def test_light_angles():
    torch.testing.assert_close(direction_from_angles(0.0, 0.0), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(direction_from_angles(90.0, 0.0), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(direction_from_angles(0.0, 90.0), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
