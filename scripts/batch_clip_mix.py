"""How many clips a training batch holds: FrameShards' order simulated from MANIFEST.tsv frame counts.

    python scripts/batch_clip_mix.py > reports/batch-clip-mix.md

One shard holds frames of one clip (make_shards, at most 1,000 frames a shard). The sequential order reads the
epoch's shuffled shards one after another into the 512-frame shuffle buffer; the interleaved one merges them at
random first (draws proportional to the frames left, as FrameShards(interleave=True) does). Independent draws are
the reference. Labels only, no frames are read.
"""

import collections
import csv
import random

from compressor.data.frame_shards import random_merge  # the package installed (pip install -e .)
from compressor.utils import buffer_shuffle


def distinct_per_batch(stream, batch=16):
    out = list(stream)
    return [len(collections.Counter(out[b:b + batch])) for b in range(0, len(out) - batch, batch)]


print("| train clips | frames | distinct clips a batch of 16: sequential | interleaved | independent draws |")
print("|---|---:|---:|---:|---:|")
for sets in (["../shared/dashcam"], ["../shared/dashcam", "../shared/dashcam-extra"]):
    clips = [(row["file"], int(row["frame_count"])) for d in sets
             for row in csv.DictReader(open(f"{d}/MANIFEST.tsv"), delimiter="\t") if row["split"] == "train"]
    shards = [[c] * min(1000, n - k) for c, n in clips for k in range(0, n, 1000)]
    seq, mix = [], []
    for epoch in range(3):
        order = list(range(len(shards)))
        random.Random(epoch).shuffle(order)
        ordered = [shards[i] for i in order]
        flat = iter([f for s in ordered for f in s])
        merged = random_merge([iter(s) for s in ordered], [len(s) for s in ordered], random.Random(7 + epoch))
        seq += distinct_per_batch(buffer_shuffle(flat, 512, random.Random(100 + epoch)))
        mix += distinct_per_batch(buffer_shuffle(merged, 512, random.Random(100 + epoch)))
    frames = [c for c, n in clips for _ in range(n)]
    iid = [len(set(random.Random(i).sample(frames, 16))) for i in range(2000)]
    mean = lambda x: sum(x) / len(x)  # noqa: E731
    print(f"| {len(clips)} | {len(frames):,} | {mean(seq):.2f} | {mean(mix):.2f} | {mean(iid):.2f} |")
