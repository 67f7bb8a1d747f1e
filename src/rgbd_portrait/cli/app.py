"""`rgbd-portrait app`: every task of one model in a local web page (Gradio)."""

from __future__ import annotations

import argparse

from rgbd_portrait.app.server import (
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    check_server_options,
    require_gradio,
    serve,
)
from rgbd_portrait.cli.common import DEVICES, DTYPE_HELP, DTYPES, pipeline_loader


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app",
        help="a local web app for every task: depth, relighting, generation, rendering, animation",
        description=(
            "Serves a web page (Gradio) on the given model, loaded once: drop in a portrait to see its depth, "
            "normals and mesh, relight it, generate and render with its identity, or animate it from speech. "
            "Listens on this machine only unless --host says otherwise; needs the app extra "
            "(pip install 'rgbd-portrait[app]')."
        ),
    )
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="model folder (default: the model shipped with the package)")
    group.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    group.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 = every network)"
    )
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = any free port")
    server.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest file accepted (default {DEFAULT_MAX_UPLOAD_MB:g} MB)",
    )
    server.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"requests that may wait for the model, all users together (default {DEFAULT_QUEUE_SIZE})",
    )
    parser.set_defaults(func=run, cpu_offload=False, vae_slicing=False, no_progress=False)


def run(args: argparse.Namespace) -> int:
    server = {"host": args.host, "port": args.port, "max_upload_mb": args.max_upload_mb, "queue_size": args.queue_size}
    check_server_options(**server)
    require_gradio()
    load = pipeline_loader(args)
    print("loading the model...", flush=True)
    serve(load(), model_name=args.model or "the shipped default model", **server)
    return 0
