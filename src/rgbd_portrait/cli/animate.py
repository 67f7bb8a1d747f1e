"""`rgbd-portrait animate`: an RGB-D talking-head video of a portrait speaking an audio track."""

from __future__ import annotations

import argparse

from rgbd_portrait.cli.common import add_model_arguments, pipeline_loader, pipeline_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "animate",
        help="animate a portrait from speech: RGB and depth videos",
        description=(
            "Audio-driven talking head: the reference portrait speaks the audio (WAV, MP3, FLAC or any file "
            "ffmpeg reads; mono or stereo, any sample rate). Writes rgb.mp4 (with the audio), depth.mp4, "
            "side_by_side.mp4, depth.npy (one depth map per frame) and optionally a point cloud per frame, "
            "all at once when the last frame is done. Audio of any length is animated window by window."
        ),
    )
    parser.add_argument("--reference", required=True, help="the portrait to animate")
    parser.add_argument("--audio", required=True, help="the speech track")
    parser.add_argument(
        "--out", required=True, help="output folder (new or empty, or a previous result with --overwrite)"
    )
    parser.add_argument("--fps", type=float, help="frames per second (default: the model's, 25 for the shipped one)")
    parser.add_argument("--seconds", type=float, help="animate only the first SECONDS of the audio")
    parser.add_argument("--guidance", type=float, help="guidance scale over reference and audio (default 2)")
    parser.add_argument("--window", type=int, help="frames denoised together (default: the model's training clips)")
    parser.add_argument(
        "--motion-frames", type=int, help="frames of the previous window that condition the next (default: the model's)"
    )
    parser.add_argument(
        "--no-start-from-reference",
        dest="start_from_reference",
        action="store_false",
        help="generate the first window from the reference's features alone, instead of following on from the photo",
    )
    parser.add_argument(
        "--mouth-only",
        action=argparse.BooleanOptionalAction,
        help="keep the photo as it is outside the mouth and jaw and generate only them (needs MediaPipe); "
        "default: the model's (the shipped one's: on)",
    )
    parser.add_argument(
        "--mouth-guidance",
        type=float,
        help="with --mouth-only, the scale of the mouth openings the audio predicts, which each step steers "
        "the mouth to (0 = off; default: the model's, for a model with a mouth guide)",
    )
    parser.add_argument("--point-clouds", action="store_true", help="also write point_clouds/NNNNNN.ply per frame")
    parser.add_argument(
        "--audio-encoder", help="local speech-encoder folder, for a model trained on wav2vec2-like features"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.pipelines.animation_export import run_animate

    options = pipeline_options(args)
    if args.guidance is not None:
        options["guidance_scale"] = args.guidance
    folder = run_animate(
        pipeline_loader(args),
        args.reference,
        args.audio,
        args.out,
        fps=args.fps,
        seconds=args.seconds,
        seed=args.seed,
        point_clouds=args.point_clouds,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        window_frames=args.window,
        motion_frames=args.motion_frames,
        start_from_reference=args.start_from_reference,
        mouth_only=args.mouth_only,
        mouth_guidance=args.mouth_guidance,
        audio_encoder=args.audio_encoder,
        **options,
    )
    print(folder)
    return 0
