"""transformers' generate() timed as `amad bench caption` times amad: per image, the encoder alone,
the whole caption, and the decoder per new token ((whole - encoder) / tokens), the best of N runs
after a warm-up. Prints JSON lines like amad's. Skipped (with a message) without torch.

    .venv/bin/python scripts/bench_caption_torch.py --model DIR [--device cuda] [--beam N]
        [--max-tokens N] [--iters N] IMAGE...
"""
import argparse
import json
import os
import resource
import sys
import time

try:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, VisionEncoderDecoderModel
except ImportError:
    print("torch/transformers not installed: skipping the transformers caption benchmark", file=sys.stderr)
    sys.exit(0)

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--device", default="cpu")
ap.add_argument("--beam", type=int, default=1)
ap.add_argument("--max-tokens", type=int, default=15)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("images", nargs="+")
args = ap.parse_args()
dev = torch.device(args.device)
model = VisionEncoderDecoderModel.from_pretrained(args.model).to(dev).eval()
proc = AutoImageProcessor.from_pretrained(args.model)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


for path in args.images:
    img = Image.open(path).convert("RGB")

    def encode():
        t = time.perf_counter()
        with torch.no_grad():
            pixels = proc(img, return_tensors="pt").pixel_values.to(dev)
            model.encoder(pixel_values=pixels)
        sync()
        return time.perf_counter() - t

    def whole():
        t = time.perf_counter()
        with torch.no_grad():
            pixels = proc(img, return_tensors="pt").pixel_values.to(dev)
            out = model.generate(pixels, max_new_tokens=args.max_tokens, num_beams=args.beam, do_sample=False)
        sync()
        eos = model.config.eos_token_id
        tokens = [t for t in out[0, 1:].tolist()]
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        return time.perf_counter() - t, len(tokens)

    encode(), whole()
    enc = min(encode() for _ in range(args.iters))
    total, tokens = min(whole() for _ in range(args.iters))
    steps = max(1, min(tokens + 1, args.max_tokens))
    print(json.dumps({"image": os.path.basename(path), "encoder_ms": enc * 1e3, "total_ms": total * 1e3,
                      "decoder_ms_per_token": (total - enc) / steps * 1e3, "tokens": tokens,
                      "beams": args.beam, "adapter": f"transformers {args.device}"}))
print(json.dumps({"peak_resident_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
