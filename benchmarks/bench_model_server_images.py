"""The reference model server's image step: peak memory of eight large photos.

The server decodes a request's images, makes them RGB and hands them to the
image processor together. Held at full size until then, eight 16-megapixel
images weigh hundreds of megabytes before the processor copies them again;
scaled to the processor's size as each is decoded (``Engine._as_processed``),
only the processor's own work is left. Each way runs in a process of its own
(``ru_maxrss`` is a process's peak, so what is printed is how far the step
raised it above what the process held with the PNG read), on the same PNG of
noise (made by the parent), with Qwen3-VL-2B's processor settings and the
server's default cap of 2,048 tokens per image; the two outputs are checked
equal to the bit (a hash of the tensor's bytes).

Run: ``.venv/bin/python benchmarks/bench_model_server_images.py`` (the
``model-server`` extra; about 30 s).
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 8
SIDE = 4000  # 16 megapixels


def measure(way: str, png: Path) -> None:
    """One way, in this process: print the peak RSS the image step added, and a hash."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from vlm_operator.model_server._engine import Engine, cap_image_tokens

    processor = Qwen2VLImageProcessorPil(  # Qwen3-VL-2B's preprocessor_config.json
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 65536, "longest_edge": 16777216},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    cap_image_tokens(processor, 2048)
    engine = Engine.__new__(Engine)  # only its image step: no model
    engine.image_processor = processor
    data = png.read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = []
    for _ in range(IMAGES):
        image = Image.open(io.BytesIO(data))
        kept.append(image.convert("RGB") if way == "full-size" else engine._as_processed(image))
        image.close()
    tensors = processor(images=kept, return_tensors="pt")["pixel_values"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256(tensors.contiguous().numpy().tobytes()).hexdigest()
    print(f"{(peak - before) / 1024:.0f} {digest}")


def main() -> int:
    from PIL import Image

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-images-") as workdir:
        png = Path(workdir) / "noise.png"
        # Noise: every pixel differs, so a filter that differed would show in the hash.
        Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3)).save(png, "PNG")
        for way in ("full-size", "scaled"):
            out = subprocess.run(
                [sys.executable, __file__, way, str(png)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=600,
            ).stdout.split()
            results[way] = (float(out[0]), out[1])
    (full, full_sum), (scaled, scaled_sum) = results["full-size"], results["scaled"]
    print(f"{IMAGES} PNGs of {SIDE}x{SIDE} noise, how far the image step raised the peak RSS:")
    print(f"  held at full size until the processor: {full:,.0f} MB")
    print(f"  scaled as each is decoded:             {scaled:,.0f} MB ({scaled / full:.2f}x)")
    same = "yes" if full_sum == scaled_sum else "NO"
    print(f"  the processor's output is the same to the bit: {same}")
    return 0 if full_sum == scaled_sum else 1


if __name__ == "__main__":
    if len(sys.argv) == 3:
        measure(sys.argv[1], Path(sys.argv[2]))
    else:
        sys.exit(main())
