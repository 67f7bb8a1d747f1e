"""Names of the files a result folder can hold (see `rgbd_portrait.pipelines.export`), without heavy imports,
so the CLI can offer them as choices before anything is loaded."""

EXPORTS = (
    "rgb",
    "depth_npy",
    "depth_png",
    "depth_color",
    "normals",
    "uncertainty",
    "albedo",
    "shading",
    "point_cloud",
    "mesh",
    "preview",
)
MESH_FORMATS = ("glb", "obj")
