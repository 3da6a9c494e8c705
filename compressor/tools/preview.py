"""Render token latents back to video, so people can watch what the compressor keeps.

    python -m compressor.tools.preview --checkpoint CKPT --input LATENT_DIR --output preview.mp4 [--original-root VIDEOS]

With ``--original-root`` (the directory ``encode.py`` was given) each frame shows the original (preprocessed the
same way) on the left and the reconstruction on the right. Video-mode latents (``encode.py`` with a video codec:
give the same ``video.pt``) are decoded as whole clips, a run of groups at a time, each from its intra frame.
"""

from __future__ import annotations

import argparse
import os

import av
import numpy as np
import torch
from tqdm import tqdm

from compressor.codec.clips import clip_codec
from compressor.codec.video import load_codec
from compressor.data.video import iter_frames, preprocess
from compressor.latents.groups import codec_fields, frame_tokens, is_video, unpad
from compressor.latents.find import expand_urls
from compressor.latents.shards import read_segments
from compressor.utils import resolve_device


def original_frames(path: str, frame_indices: list[int], image_size: tuple[int, int]) -> dict[int, torch.Tensor]:
    wanted, out = set(frame_indices), {}
    for i, frame in enumerate(iter_frames(path)):
        if i in wanted:
            out[i] = preprocess(frame, image_size)
        if i >= max(wanted):
            break
    return out


def render(checkpoint: str, inputs: list[str], output: str, original_root: str | None = None,
           source: str | None = None, max_segments: int | None = None, batch_size: int = 32,
           device: str = "cpu") -> int:
    codec = clip_codec(load_codec(checkpoint, map_location=device), batch_size)
    # Slices of whole groups: each starts at an intra frame (a segment starts one) and decodes alone.
    batch_size = -(-batch_size // codec.gop) * codec.gop
    video = is_video(codec_fields(codec))  # the format of the codec's tokens, to check each segment's against
    H, W = codec.image_size
    width = 2 * W if original_root else W
    written, segments = 0, 0
    with av.open(output, "w") as container:
        stream = None
        for url in expand_urls(inputs):
            for seg in read_segments(url):
                meta = seg["meta"]
                if source and meta.get("source") != source:
                    continue
                if max_segments is not None and segments >= max_segments:
                    break
                segments += 1
                if stream is None:
                    stream = container.add_stream("libx264", rate=round(meta.get("fps", 20)))
                    stream.width, stream.height, stream.pix_fmt = width, H, "yuv420p"
                tokens = seg["tokens"]
                if video != is_video(meta):
                    raise SystemExit(f"{checkpoint} is a {'video' if video else 'per-frame'} codec and "
                                     f"{meta.get('source')} holds {'video' if is_video(meta) else 'per-frame'} tokens")
                rows = unpad(tokens, frame_tokens(meta)) if video else tokens  # each frame's own tokens
                indices = meta.get("frame_indices") or list(range(len(tokens)))
                originals = {}
                if original_root:
                    originals = original_frames(os.path.join(original_root, meta["source"]), indices, (H, W))
                for start in tqdm(range(0, len(tokens), batch_size), desc=f"{meta.get('source')}#{meta.get('segment')}",
                                  leave=False):
                    recon = codec.decode_clip(rows[start : start + batch_size]).cpu()
                    for j, frame in enumerate(recon):
                        if original_root:
                            orig = originals.get(indices[start + j], torch.zeros_like(frame))
                            frame = torch.cat([orig, frame], dim=2)  # original left, reconstruction right
                        image = np.ascontiguousarray(frame.permute(1, 2, 0).numpy())
                        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                            container.mux(packet)
                        written += 1
        if stream is None:
            raise SystemExit(f"no segments matched in {inputs}" + (f" for source {source!r}" if source else ""))
        for packet in stream.encode():
            container.mux(packet)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compressor.tools.preview", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="the model that made the latents: model.pt, a train.py .ckpt, a Hub folder or video.pt")
    ap.add_argument("--input", required=True, nargs="+", help="latent shards or the encode.py output directory")
    ap.add_argument("--output", required=True, help="video file to write (e.g. preview.mp4)")
    ap.add_argument("--original-root", default=None, help="input root given to encode.py: show originals side by side")
    ap.add_argument("--source", default=None, help="only this source video (path relative to the input root)")
    ap.add_argument("--max-segments", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32, help="frames decoded at once")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    args = ap.parse_args(argv)
    n = render(args.checkpoint, args.input, args.output, args.original_root, args.source, args.max_segments,
               args.batch_size, resolve_device(args.device))
    print(f"wrote {n} frames to {args.output}")


if __name__ == "__main__":
    main()
