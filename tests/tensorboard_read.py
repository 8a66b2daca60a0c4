"""Reads a run directory's TensorBoard event files with the `tensorboard` package and prints
what it finds as JSON, for tests/watch.rs.

- "scalars": {tag: [[step, value], ...]} and "images": {tag: [[step, width, height], ...]},
  through EventAccumulator (what TensorBoard's own backend loads);
- "raw": [[file, step, tag], ...] for every summary value in every file, through the raw
  event-file loader (which checks every record's CRC), to find duplicated steps.
"""
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator, event_file_loader

run = sys.argv[1]
acc = event_accumulator.EventAccumulator(run, size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {
        t: [[e.step, e.width, e.height] for e in acc.Images(t)] for t in tags["images"]
    },
    "raw": [],
}
for name in sorted(os.listdir(run)):
    if not name.startswith("events.out.tfevents."):
        continue
    for event in event_file_loader.EventFileLoader(os.path.join(run, name)).Load():
        for v in event.summary.value:
            out["raw"].append([name, event.step, v.tag])
print(json.dumps(out))
