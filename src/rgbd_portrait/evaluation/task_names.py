"""The evaluation's task names and titles, in a module light enough for the CLI to read while building parsers."""

TASKS = ("image_to_depth", "depth_to_image", "joint", "relighting", "speed")
TASK_TITLES = {
    "image_to_depth": "Image → depth",
    "depth_to_image": "Depth → image",
    "joint": "Joint generation",
    "relighting": "Relighting",
    "speed": "Speed",
}
# What image→depth reads as its reference, by `self_reference`, as reports and pages word it.
DEPTH_REFERENCE_WORDS = {True: "the image as its own reference", False: "no reference"}
