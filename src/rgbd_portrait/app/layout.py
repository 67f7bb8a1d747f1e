"""The app's page: the portrait on top, one tab per task, and which `AppTasks` method each control runs.

Layout and wiring only. A new portrait (uploaded or an example) has its depth predicted at once, and the Relight
tab shows it under the current light; the other tabs use it as their reference. Model work (depth, generation,
rendering, animation, fitting an uploaded depth map) shares one queue slot, `MODEL_JOBS` at a time: the pipeline
keeps its scheduler's state between steps, so two of its calls must not interleave. Shading a subject under a
new light runs beside it, `RELIGHT_JOBS` at a time, so the light controls stay quick while the model works.

Endpoints for `gradio_client` (`api_name`): /depth, /relight, /relight_depth, /generate, /render, /animate.
"""

from __future__ import annotations

import gradio as gr

from rgbd_portrait.app.examples import AppExamples
from rgbd_portrait.app.tasks import LAMP, AppTasks
from rgbd_portrait.geometry.relighting import DEFAULT_AMBIENT, LIGHT_PRESETS
from rgbd_portrait.pipelines.pipeline import DEFAULT_GUIDANCE_SCALE

MODEL_QUEUE, MODEL_JOBS = "model", 1
RELIGHT_QUEUE, RELIGHT_JOBS = "relight", 2
# A lamp given by angles is as strong as a preset's key light (as in `rgbd-portrait relight`).
LAMP_INTENSITY = 0.8
MAX_SAMPLES = 4
MAX_STEPS = 50
MAX_ANIMATION_SECONDS = 10.0
ANIMATION_SECONDS = 1.0
IMAGE_HEIGHT = 256
MESH_HEIGHT = 360
# Results are small (the model's resolution): shown filling their box.
PAGE_CSS = ".result-image img { width: 100%; height: 100%; object-fit: contain; }"


def _seed() -> gr.Number:
    return gr.Number(value=0, precision=0, minimum=0, label="seed")


def _steps(value: int, elem_id: str) -> gr.Slider:
    return gr.Slider(1, MAX_STEPS, value=value, step=1, label="denoising steps", elem_id=elem_id)


def _guidance() -> gr.Slider:
    return gr.Slider(1.0, 5.0, value=DEFAULT_GUIDANCE_SCALE, step=0.5, label="guidance over the reference")


def _samples() -> gr.Slider:
    return gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples")


def _image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(
        label=label,
        elem_id=elem_id,
        elem_classes=["result-image"],
        interactive=False,
        format="png",
        height=IMAGE_HEIGHT,
    )


def _mesh(label: str, elem_id: str) -> gr.Model3D:
    return gr.Model3D(label=label, elem_id=elem_id, height=MESH_HEIGHT)


def build_page(tasks: AppTasks, examples: AppExamples, *, model_line: str) -> gr.Blocks:
    model = tasks.pipeline.model
    with gr.Blocks(title="rgbd-portrait", analytics_enabled=False) as page:
        gr.Markdown(
            "## rgbd-portrait\n"
            f"{model_line}. Upload a portrait or pick an example: its depth is predicted at once, the Relight tab "
            "lights it from any side, and the other tabs take it as their reference."
        )
        subject = gr.State()
        with gr.Row():
            with gr.Column(scale=1):
                portrait = gr.File(label="portrait (any image file)", elem_id="portrait", height=140)
                gr.Examples(
                    [[str(path)] for path, _ in examples.portraits],
                    inputs=[portrait],
                    example_labels=[caption for _, caption in examples.portraits],
                    label="public-domain portraits",
                )
            seen = _image("as the model sees it", "portrait-seen")

        with gr.Tabs():
            with gr.Tab("Depth"):
                with gr.Row():
                    ensemble = gr.Slider(1, 8, value=model.settings.ensemble_size, step=1, label="ensemble")
                    depth_steps = _steps(model.settings.depth_steps, "depth-steps")
                    depth_seed = _seed()
                    depth_button = gr.Button("predict depth again", variant="secondary")
                with gr.Row():
                    depth_image = _image("depth (near red, far blue)", "depth-image")
                    normals_image = _image("normals", "normals-image")
                    uncertainty_image = _image("uncertainty (ensemble spread)", "uncertainty-image")
                with gr.Row():
                    mesh = _mesh("mesh (drag to turn)", "depth-mesh")
                    depth_files = gr.File(label="downloads", file_count="multiple", elem_id="depth-files")

            with gr.Tab("Relight"), gr.Row():
                with gr.Column(scale=1):
                    light = gr.Radio([LAMP, *LIGHT_PRESETS], value=LAMP, label="light", elem_id="light")
                    azimuth = gr.Slider(-180, 180, value=-45, step=1, label="lamp azimuth (°)", elem_id="azimuth")
                    elevation = gr.Slider(-90, 90, value=20, step=1, label="lamp elevation (°)", elem_id="elevation")
                    intensity = gr.Slider(0.0, 2.0, value=LAMP_INTENSITY, step=0.05, label="lamp intensity")
                    ambient = gr.Slider(0.0, 1.0, value=DEFAULT_AMBIENT, step=0.05, label="ambient light")
                    relight_depth = gr.File(
                        label="depth map of the portrait (optional; its size; .npy, 16-bit PNG or EXR)",
                        elem_id="relight-depth",
                        height=100,
                    )
                relit = _image("relit", "relit")
                with gr.Column(scale=1):
                    shading = _image("new shading", "shading")
                    albedo = _image("estimated albedo", "albedo")

            with gr.Tab("Generate"):
                with gr.Row():
                    generate_samples, generate_seed = _samples(), _seed()
                    generate_steps, generate_guidance = _steps(model.default_steps, "generate-steps"), _guidance()
                generate_button = gr.Button("generate RGB + depth of the portrait's identity", variant="primary")
                with gr.Row():
                    generated = gr.Gallery(label="images and their depth", columns=4, elem_id="generated")
                    generated_mesh = _mesh("mesh of the first image", "generated-mesh")
                generated_zip = gr.File(label="every result (zip)")

            with gr.Tab("Render"):
                with gr.Row():
                    render_depth = gr.File(label="depth map (.npy, 16-bit PNG or EXR)", elem_id="render-depth")
                    render_samples, render_seed = _samples(), _seed()
                    render_steps, render_guidance = _steps(model.default_steps, "render-steps"), _guidance()
                render_button = gr.Button("render the depth map with the portrait's identity", variant="primary")
                with gr.Row():
                    rendered = gr.Gallery(label="images", columns=4, elem_id="rendered")
                    rendered_depth = _image("the depth, as the model read it", "rendered-depth")
                    rendered_mesh = _mesh("mesh of the first image", "rendered-mesh")
                rendered_zip = gr.File(label="every result (zip)")

            with gr.Tab("Animate"):
                if model.motion is None:
                    gr.Markdown("This model has no motion layers (the talking-head stage), so it cannot animate.")
                with gr.Row():
                    audio = gr.Audio(
                        sources=["upload", "microphone"], type="filepath", format=None, label="speech", elem_id="audio"
                    )
                    gr.Examples([[str(examples.speech)]], inputs=[audio], label="synthetic speech")
                with gr.Row():
                    seconds = gr.Slider(
                        0.2, MAX_ANIMATION_SECONDS, value=ANIMATION_SECONDS, step=0.2, label="seconds (from the start)"
                    )
                    animate_seed = _seed()
                    animate_steps, animate_guidance = _steps(model.default_steps, "animate-steps"), _guidance()
                animate_button = gr.Button("animate the portrait", variant="primary")
                with gr.Row():
                    side_by_side = gr.Video(label="RGB | depth", elem_id="side-by-side")
                    rgb_video = gr.Video(label="RGB")
                    depth_video = gr.Video(label="depth")
                frame_depths = gr.File(label="depth of every frame (.npy)")

        lamp_controls = [azimuth, elevation, intensity, ambient]
        light_controls = [light, *lamp_controls]
        relit_outputs = [relit, shading, albedo]

        depth_outputs = [seen, depth_image, normals_image, uncertainty_image, mesh, depth_files, subject]
        gr.on(
            [portrait.change, depth_button.click],
            tasks.depth,
            inputs=[portrait, ensemble, depth_steps, depth_seed],
            outputs=depth_outputs,
            api_name="depth",
            concurrency_id=MODEL_QUEUE,
            concurrency_limit=MODEL_JOBS,
        ).success(
            tasks.relight_new_subject,
            inputs=[subject, *light_controls],
            outputs=relit_outputs,
            api_visibility="private",
            concurrency_id=RELIGHT_QUEUE,
            concurrency_limit=RELIGHT_JOBS,
        ).success(lambda: None, outputs=[relight_depth], api_visibility="private", queue=False)  # a new subject
        light.input(
            tasks.relight,
            inputs=[subject, *light_controls],
            outputs=relit_outputs,
            api_name="relight",
            trigger_mode="always_last",
            concurrency_id=RELIGHT_QUEUE,
            concurrency_limit=RELIGHT_JOBS,
        )
        # Moving a lamp control switches the light to the lamp.
        gr.on(
            [control.input for control in lamp_controls],
            lambda state, *lamp: (LAMP, *tasks.relight(state, LAMP, *lamp)),
            inputs=[subject, *lamp_controls],
            outputs=[light, *relit_outputs],
            api_visibility="private",
            trigger_mode="always_last",
            concurrency_id=RELIGHT_QUEUE,
            concurrency_limit=RELIGHT_JOBS,
        )
        gr.on(
            [relight_depth.upload, relight_depth.clear],
            tasks.use_depth,
            inputs=[portrait, subject, relight_depth, *light_controls],
            outputs=[*relit_outputs, subject],
            api_name="relight_depth",
            concurrency_id=MODEL_QUEUE,
            concurrency_limit=MODEL_JOBS,
        )
        generate_button.click(
            tasks.generate,
            inputs=[portrait, generate_samples, generate_seed, generate_steps, generate_guidance],
            outputs=[generated, generated_mesh, generated_zip],
            api_name="generate",
            concurrency_id=MODEL_QUEUE,
            concurrency_limit=MODEL_JOBS,
        )
        render_button.click(
            tasks.render,
            inputs=[portrait, render_depth, render_samples, render_seed, render_steps, render_guidance],
            outputs=[rendered, rendered_depth, rendered_mesh, rendered_zip],
            api_name="render",
            concurrency_id=MODEL_QUEUE,
            concurrency_limit=MODEL_JOBS,
        )
        animate_button.click(
            tasks.animate,
            inputs=[portrait, audio, seconds, animate_seed, animate_steps, animate_guidance],
            outputs=[side_by_side, rgb_video, depth_video, frame_depths],
            api_name="animate",
            concurrency_id=MODEL_QUEUE,
            concurrency_limit=MODEL_JOBS,
        )
    return page
