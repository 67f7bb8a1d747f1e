"""The demo's HTML page, made from the run's record (`demo.json`): one file, inline style, no scripts, every image
and video a relative link into the demo folder."""

from __future__ import annotations

import html
from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

from rgbd_portrait.demo.overview import OVERVIEW_FILE
from rgbd_portrait.evaluation.task_names import DEPTH_REFERENCE_WORDS, TASK_TITLES

IMAGE_WIDTH = 160  # CSS pixels per image on the page; the files keep the model's resolution

ABOUT_MODEL = (
    "The model is a joint RGB-D latent diffusion model. One UNet, its input channels expanded, denoises the RGB "
    "and the depth latents of a portrait together; which of them are given (none, the image, or the depth) "
    "selects the task. A reference network, a copy of the UNet, passes the self-attention features of a "
    "reference portrait to it, and that is how results keep an identity. A VAE encodes images and depth maps "
    "alike (depth normalised per image, as in Marigold), so predicted depth is relative: it has no metric scale "
    "or offset."
)
ABOUT_SHIPPED = (
    "This is the small default model that ships with rgbd-portrait, trained by the project itself on heads "
    "rendered by its synthetic studio and on real photographs (LFW and UTKFace, research use) with face-mesh "
    "pseudo-depth, to show every task working on a laptop CPU. Its depth of a photo follows the face's shape; "
    "its images are soft, 128-pixel portraits, and its talking head has seen only synthetic speakers. Sharper "
    "portraits need a model trained at Stable Diffusion scale (<code>rgbd-portrait init</code>, "
    "<code>prepare</code>, <code>train</code>)."
)
ABOUT_OTHER = (
    "This page shows the model in <code>{folder}</code>. A model folder does not record what the model was "
    "trained on, so the page cannot say. The synthetic heads are the test identities of the studio data set of "
    "the default training configuration."
)
MACHINE_LABELS = {
    "device": "device",
    "dtype": "weights and activations",
    "torch_threads": "torch threads",
    "cpu_count": "CPU cores",
    "platform": "platform",
    "python": "Python",
    "torch": "PyTorch",
    "rgbd_portrait": "rgbd-portrait",
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin: 1.2em 0 0.4em; font-size: 1.05em; }
.time { color: #777; font-weight: normal; } table { border-collapse: collapse; }
td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: left; } .number { text-align: right; }
.row { display: flex; flex-wrap: wrap; gap: 0.6em; } figure { margin: 0; }
figure img { width: WIDTHpx; height: WIDTHpx; display: block; background: #000; }
figcaption { font-size: 0.85em; color: #444; max-width: WIDTHpx; } .note { color: #555; font-size: 0.9em; }
video, img.overview { max-width: 100%; } code { background: #f3f3f3; padding: 0 0.2em; }
""".replace("WIDTH", str(IMAGE_WIDTH))


def _escape(value: Any) -> str:
    return html.escape(str(value))


def _link(path: str, text: str) -> str:
    return f'<a href="{quote(path)}">{_escape(text)}</a>'


def _figure(path: str, caption: str) -> str:
    caption = _escape(caption)
    return f'<figure><img src="{quote(path)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _table(rows: Sequence[Sequence[Any]], *, header: Sequence[str] = (), numbers: Sequence[int] = ()) -> str:
    def cells(tag: str, values: Sequence[Any]) -> str:
        kinds = [' class="number"' if column in numbers else "" for column in range(len(values))]
        return "".join(f"<{tag}{kind}>{_escape(value)}</{tag}>" for kind, value in zip(kinds, values))

    lines = ["<table>"]
    if header:
        lines.append(f"<tr>{cells('th', header)}</tr>")
    lines += [f"<tr>{cells('td', row)}</tr>" for row in rows]
    lines.append("</table>")
    return "\n".join(lines)


def task_title(task: str) -> str:
    """The heading of a task of the record (`relight_<preset>` included)."""
    if task.startswith("relight_"):
        return f"Relighting ({task.removeprefix('relight_')})"
    if task == "animation":
        return "Talking clip"
    return TASK_TITLES[task]


def _task_block(run: dict[str, Any], figures: list[str], notes: Sequence[str]) -> str:
    """One task on one portrait: heading with its time and steps, the images, notes, links to its files."""
    folder = run["folders"][0]
    settings = run["settings"]
    timing = f"{run['seconds']:.1f} s"
    if "steps" in settings:
        timing += f"; {settings['steps']} steps"
    if "ensemble_size" in settings:
        timing += f", ensemble of {settings['ensemble_size']}"
    files = [_link(f"{folder}/", "result folder")]
    files += [_link(f"{folder}/{name}", name) for name in ("mesh.glb", "point_cloud.ply")]
    lines = [f'<h3>{_escape(task_title(run["task"]))} <span class="time">{_escape(timing)}</span></h3>']
    lines.append('<div class="row">' + "".join(figures) + "</div>")
    lines += [f'<p class="note">{_escape(note)}</p>' for note in [*notes, *run["notes"]]]
    lines.append('<p class="note">Files: ' + " · ".join(files) + "</p>")
    return "\n".join(lines)


def _image_to_depth(portrait: dict[str, Any], folder: str) -> tuple[list[str], list[str]]:
    figures = [_figure(portrait["target"], "input"), _figure(f"{folder}/depth_color.png", "predicted depth")]
    notes = []
    if portrait["synthetic"]:
        figures.append(_figure(portrait["truth_depth_color"], "exact depth (studio)"))
        scores = portrait["depth_scores"]
        notes.append(
            f"Against the exact depth, after a least-squares scale and shift on the head: AbsRel "
            f"{scores['abs_rel']:.3f}, δ1 {scores['delta1']:.3f} (a flat plane scores AbsRel "
            f"{scores['flat_plane_abs_rel']:.3f}, δ1 {scores['flat_plane_delta1']:.3f}). Near is red, far is blue."
        )
    figures.append(_figure(f"{folder}/normals.png", "normals"))
    return figures, notes


def _joint(portrait: dict[str, Any], folder: str) -> tuple[list[str], list[str]]:
    figures = [
        _figure(portrait["image"], "reference"),
        _figure(f"{folder}/rgb.png", "generated image"),
        _figure(f"{folder}/depth_color.png", "its depth"),
        _figure(f"{folder}/normals.png", "its normals"),
    ]
    return figures, ["A new portrait of the reference's identity and its depth, from one denoising loop."]


def _depth_to_image(portrait: dict[str, Any], folder: str) -> tuple[list[str], list[str]]:
    figures = [
        _figure(f"{folder}/depth_color.png", "input depth"),
        _figure(portrait["image"], "reference"),
        _figure(f"{folder}/rgb.png", "rendered image"),
    ]
    if not portrait["synthetic"]:
        return figures, ["A photo has no second view: its own predicted depth (above) is rendered with its looks."]
    figures.append(_figure(portrait["target"], "the actual view"))
    note = (
        "The exact depth of the second view, rendered with the looks of the reference view. The actual view has "
        "its own light; the result takes its light from the reference."
    )
    return figures, [note]


def _relight(portrait: dict[str, Any], folder: str, preset: str) -> tuple[list[str], list[str]]:
    figures = [
        _figure(portrait["target"], "input"),
        _figure(f"{folder}/rgb.png", f"relit: {preset}"),
        _figure(f"{folder}/albedo.png", "estimated albedo"),
        _figure(f"{folder}/shading.png", "new shading"),
    ]
    note = (
        "Normals from the predicted depth (above); the original light is estimated and divided out, and the "
        f"'{preset}' light applied."
    )
    return figures, [note]


def _portrait_section(portrait: dict[str, Any], runs: dict[str, dict[str, Any]], presets: Sequence[str]) -> str:
    blocks = [f'<h2 id="{_escape(portrait["name"])}">{_escape(portrait["title"])}</h2>']
    blocks.append(f'<p class="note">{_escape(portrait["credit"])}</p>')
    shown = [("image_to_depth", _image_to_depth), ("joint", _joint), ("depth_to_image", _depth_to_image)]
    shown += [(f"relight_{preset}", partial(_relight, preset=preset)) for preset in presets]
    for task, describe in shown:
        run = runs[task]
        figures, notes = describe(portrait, run["folders"][0])
        blocks.append(_task_block(run, figures, notes))
    return "<section>\n" + "\n".join(blocks) + "\n</section>"


def _animation_section(record: dict[str, Any], titles: dict[str, str]) -> str:
    lines = ['<section id="talking">', "<h2>Talking clips</h2>"]
    unavailable = record["animation"]["unavailable"]
    if unavailable:
        lines.append(f"<p>{_escape(unavailable)}</p>")
    for run in (run for run in record["tasks"] if run["task"] == "animation"):
        folder, settings = run["folders"][0], run["settings"]
        timing = f"{run['seconds']:.1f} s; {settings['steps']} steps"
        lines.append(f'<h3>{_escape(titles[run["portrait"]])} <span class="time">{_escape(timing)}</span></h3>')
        lines.append(f'<video controls loop preload="metadata" src="{quote(folder)}/side_by_side.mp4"></video>')
        files = " · ".join(_link(f"{folder}/{name}", name) for name in ("rgb.mp4", "depth.mp4", "depth.npy"))
        lines.append(
            f'<p class="note">{settings["seconds"]:g} s at {settings["fps"]:g} fps, RGB and depth side by side, '
            f"speaking the studio's synthetic speech ({_link(settings['audio'], 'audio')}). Files: {files}</p>"
        )
        lines += [f'<p class="note">{_escape(note)}</p>' for note in run["notes"]]
    lines.append("</section>")
    return "\n".join(lines)


def _timing_rows(record: dict[str, Any]) -> list[list[Any]]:
    rows = [[step, "", f"{seconds:.1f}", ""] for step, seconds in record["setup_seconds"].items()]
    per_task: dict[str, list[float]] = {}
    for run in record["tasks"]:
        per_task.setdefault(run["task"], []).append(run["seconds"])
    for task, seconds in per_task.items():
        rows.append([task_title(task), len(seconds), f"{sum(seconds):.1f}", f"{sum(seconds) / len(seconds):.1f}"])
    rows.append(["the whole demo", "", f"{record['total_seconds']:.1f}", ""])
    return rows


def _model_rows(model: dict[str, Any]) -> list[list[str]]:
    components = ", ".join(
        f"{name.replace('_', ' ')} {count / 1e6:.2f} M"
        for name, count in model["component_parameters"].items()
        if count
    )
    motion = model["motion"]
    talking = "no motion layers"
    if motion is not None:
        talking = f"motion layers, windows of {motion['window_frames']} frames at {motion['fps']:g} fps"
    return [
        ["folder", model["folder"] or "(a pipeline object)"],
        ["parameters", f"{model['parameters'] / 1e6:.2f} M ({components})"],
        ["resolution", f"{model['resolution']}×{model['resolution']}"],
        [
            "denoising steps",
            f"{model['default_steps']}; image→depth {model['depth_steps']}, ensemble of {model['ensemble_size']}, "
            + DEPTH_REFERENCE_WORDS[model.get("depth_self_reference", True)],
        ],
        ["prediction, sampler", f"{model['prediction_type']}, {model['scheduler']}"],
        ["talking head", talking],
    ]


def render_page(record: dict[str, Any]) -> str:
    """The HTML page of a demo record (see `rgbd_portrait.demo.run`)."""
    model = record["model"]
    about = ABOUT_SHIPPED if model["shipped_default"] else ABOUT_OTHER.format(folder=_escape(model["folder"]))
    machine_rows = [[MACHINE_LABELS[key], value] for key, value in record["machine"].items()]
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for run in record["tasks"]:
        runs.setdefault(run["portrait"], {})[run["task"]] = run
    titles = {portrait["name"]: portrait["title"] for portrait in record["portraits"]}
    contents = [f'<a href="#{_escape(name)}">{_escape(title)}</a>' for name, title in titles.items()]
    contents.append('<a href="#talking">talking clips</a>')
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><title>rgbd-portrait demo</title>',
        f"<style>{STYLE}</style></head>",
        "<body>",
        "<h1>rgbd-portrait demo</h1>",
        f"<p>{ABOUT_MODEL}</p>",
        f"<p>{about}</p>",
        f"<p>Contents: {' · '.join(contents)}</p>",
        f'<p><img class="overview" src="{OVERVIEW_FILE}" alt="every portrait (rows) and task result (columns)"></p>',
        "<h2>Model</h2>",
        _table(_model_rows(model)),
        "<h2>Machine</h2>",
        _table(machine_rows),
        "<h2>Time</h2>",
        '<p class="note">Wall-clock seconds; a task includes writing every file of its result folder.</p>',
        _table(_timing_rows(record), header=["step", "portraits", "seconds", "per portrait"], numbers=(1, 2, 3)),
    ]
    parts += [f'<p class="note">{_escape(note)}</p>' for note in record["notes"]]
    for portrait in record["portraits"]:
        parts.append(_portrait_section(portrait, runs[portrait["name"]], record["relight_presets"]))
    parts.append(_animation_section(record, titles))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
