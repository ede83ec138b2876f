"""Checks that a student distilled by amad loads in transformers and captions exactly as
`amad caption` does: the same checkpoint directory, the same images, each side decoding as the
checkpoint's generation_config.json says. Offline (transformers, torch and tokenizers from the
project's .venv); run from the repository root after `cargo build --release`:

    target/release/amad distill --teacher DIR --images PHOTOS --out STUDENT ...
    .venv/bin/python scripts/check_student_transformers.py STUDENT PHOTO...

Prints each image's two captions and exits non-zero if any differ.
"""
import os
import subprocess
import sys

import torch
from PIL import Image
from transformers import (GenerationConfig, PreTrainedTokenizerFast, ViTImageProcessor,
                          VisionEncoderDecoderModel)

student, images = sys.argv[1], sys.argv[2:]
if not images:
    sys.exit(__doc__)
model = VisionEncoderDecoderModel.from_pretrained(student, attn_implementation="eager").eval()
processor = ViTImageProcessor.from_pretrained(student)
tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(student, "tokenizer.json"))
generation = GenerationConfig.from_pretrained(student)

env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
out = subprocess.run(["target/release/amad", "caption", "--model", student, *images],
                     capture_output=True, text=True, env=env, check=True).stdout
amad = dict(line.split("\t", 1) for line in out.splitlines())

differ = 0
for path in images:
    pixels = processor(Image.open(path).convert("RGB"), return_tensors="pt").pixel_values
    with torch.no_grad():
        ids = model.generate(pixels, generation_config=generation)[0]
    theirs = tokenizer.decode(ids, skip_special_tokens=True)
    ours = amad[os.path.basename(path)]
    same = theirs == ours
    differ += not same
    print(f"{'same' if same else 'DIFFERENT'}  {os.path.basename(path)}\n  transformers: {theirs!r}\n  amad:         {ours!r}")
print(f"{len(images) - differ} of {len(images)} captions identical")
sys.exit(1 if differ else 0)
