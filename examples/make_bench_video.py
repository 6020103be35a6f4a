"""Write a synthetic H.264 test video for the end-to-end benchmark (no video can be downloaded here).

    python examples/make_bench_video.py out.mp4 --width 2560 --height 1440 --seconds 32 --fps 24

Moving colour gradients, sliding shapes and fine texture, encoded with libx264 (`--crf`, keyframe
every `--keyframe-interval` frames, x264's default 250), so that decoding costs what a camera clip of
similar bitrate costs: every frame is a real P/B frame, and sampled frames need their GOP decoded.
Frames are made and encoded one at a time (a 1440p clip never sits in memory). Prints the file's size
and bitrate.
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction

import numpy as np


def _frame(index: int, height: int, width: int, texture: np.ndarray) -> np.ndarray:
    """One RGB frame: gradients drifting with time, three sliding boxes, a static fine texture."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = index / 48.0
    frame = np.empty((height, width, 3), dtype=np.float32)
    frame[..., 0] = 0.5 + 0.5 * np.sin(6.0 * xs + phase)
    frame[..., 1] = 0.5 + 0.5 * np.sin(5.0 * ys - 1.3 * phase)
    frame[..., 2] = 0.5 + 0.5 * np.sin(4.0 * (xs + ys) + 0.7 * phase)
    for box in range(3):
        size = height // (4 + box)
        top = int((0.1 + 0.25 * box) * height)
        left = int(((index * (3 + 2 * box)) % (width - size)))
        frame[top: top + size, left: left + size] = (box / 3.0, 1.0 - box / 3.0, 0.5)
    image = np.clip(frame * 230.0 + texture, 0, 255).astype(np.uint8)
    return image


def main() -> None:
    import av

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--height", type=int, default=1440)
    parser.add_argument("--seconds", type=float, default=32.0)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--crf", type=int, default=26)
    parser.add_argument("--keyframe-interval", type=int, default=250)
    args = parser.parse_args()
    texture = np.random.default_rng(0).normal(0.0, 6.0, size=(args.height, args.width, 1)).astype(np.float32)
    num_frames = round(args.seconds * args.fps)
    with av.open(args.path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(args.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = args.width, args.height, "yuv420p"
        stream.codec_context.gop_size = args.keyframe_interval
        stream.options = {"crf": str(args.crf), "preset": "veryfast"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame(index, args.height, args.width, texture), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    size = os.path.getsize(args.path)
    print(f"{args.path}: {args.width}x{args.height}, {num_frames} frames at {args.fps:g} fps, "
          f"{size / 2**20:.1f} MiB, {size * 8 / args.seconds / 1e6:.1f} Mbit/s")


if __name__ == "__main__":
    main()
