"""Starting and stopping the app: its own temporary folder, Gradio kept offline and inside that folder.

Everything the app writes or serves lives in one new temporary folder, removed when the app closes: Gradio's
uploads and cache (`GRADIO_TEMP_DIR`, `GRADIO_EXAMPLES_CACHE` point there), the examples and the results. Gradio
serves files only from those two cache folders (and paths given to `allowed_paths`, none here), so no other file
on the machine is reachable from the page. Telemetry and Gradio's version check are off, the page uses system
fonts (no font service), and server-side rendering (a Node server) is off: the app works without a network.

One app per process: the folder is set through Gradio's environment variables.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rgbd_portrait.errors import UserInputError

if TYPE_CHECKING:  # the CLI reads this module's defaults before torch or Gradio load
    from rgbd_portrait.app.examples import AppExamples
    from rgbd_portrait.pipelines.pipeline import RGBDPortraitPipeline

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 25.0
# Requests waiting for their turn, all users together; more are refused with "the queue is full".
DEFAULT_QUEUE_SIZE = 16
_SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
_SYSTEM_MONO_FONTS = ("ui-monospace", "monospace")


def require_gradio():
    """The gradio module, or a one-line error saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise UserInputError("the app needs Gradio: pip install 'rgbd-portrait[app]'") from None
    return gradio


def check_server_options(*, host: str, port: int, max_upload_mb: float, queue_size: int) -> None:
    """One-line errors for options that cannot work, before anything loads; a port in use is one of them."""
    if not 0 <= port <= 65535:
        raise UserInputError(f"--port {port}: not a port number (0-65535; 0 = any free port)")
    if not max_upload_mb > 0:
        raise UserInputError(f"--max-upload-mb {max_upload_mb}: must be positive")
    if queue_size <= 0:
        raise UserInputError(f"--queue-size {queue_size}: must be positive")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserInputError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class RunningApp:
    """A started app: its address and folder; `close` stops the server and removes the folder."""

    page: object  # the gradio.Blocks
    url: str
    folder: Path
    examples: AppExamples
    _environment: dict[str, str | None] = field(default_factory=dict, repr=False)

    def close(self) -> None:
        self.page.close()
        _discard(self.folder, self._environment)


def start_app(
    pipeline: RGBDPortraitPipeline,
    *,
    model_name: str = "the shipped default model",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> RunningApp:
    """Serve the app for `pipeline` at http://host:port (port 0: a free one) in a background thread."""
    check_server_options(host=host, port=port, max_upload_mb=max_upload_mb, queue_size=queue_size)
    gr = require_gradio()
    from rgbd_portrait.app.examples import write_examples
    from rgbd_portrait.app.layout import PAGE_CSS, build_page
    from rgbd_portrait.app.tasks import AppTasks

    folder = Path(tempfile.mkdtemp(prefix="rgbd-portrait-app-")).resolve()
    settings = {
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "GRADIO_EXAMPLES_CACHE": str(folder / "gradio" / "examples"),
    }
    environment = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    side = pipeline.model.resolution
    model_line = f"Model: {model_name}, {side}×{side} px, on {pipeline.device.type}"
    try:
        examples = write_examples(folder / "gradio" / "inputs")
        page = build_page(AppTasks(pipeline, folder / "gradio" / "results"), examples, model_line=model_line)
        page.queue(max_size=queue_size)
        port = free_port(host) if port == 0 else port
        page.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
            max_file_size=round(max_upload_mb * 1024 * 1024),
            ssr_mode=False,
            mcp_server=False,
            footer_links=["api"],
            theme=gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_SYSTEM_MONO_FONTS),
            css=PAGE_CSS,
        )
    except OSError as error:
        _discard(folder, environment)
        raise UserInputError(f"--host {host} --port {port}: cannot serve there ({error})") from None
    except BaseException:
        _discard(folder, environment)
        raise
    url = page.local_url.rstrip("/")
    return RunningApp(page=page, url=url, folder=folder, examples=examples, _environment=environment)


def _discard(folder: Path, environment: dict[str, str | None]) -> None:
    """Remove the app's folder and restore the environment variables it set."""
    shutil.rmtree(folder, ignore_errors=True)
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def serve(pipeline: RGBDPortraitPipeline, **options) -> None:
    """`start_app` and serve until interrupted (Ctrl-C), then remove the app's folder."""
    app = start_app(pipeline, **options)
    print(f"rgbd-portrait app: {app.url}  (Ctrl-C stops it)", flush=True)
    try:
        while app.page.is_running:
            time.sleep(0.5)
    finally:
        app.close()
