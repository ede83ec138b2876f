"""Writes a captioner of a public Hub model's exact shape with random weights, laid out as the Hub
holds it (config.json, preprocessor_config.json, tokenizer.json, model.safetensors, and with
--bin also pytorch_model.bin), for benchmarks: random weights cost the same time as real ones,
and nothing here can reach the Hub. The tokenizer is GPT-2's real one, copied from
tests/fixtures/hub_tiny (made by tests/fixtures/make_hub_tiny.py).

    .venv/bin/python scripts/make_random_hub_model.py --out DIR [--shape nlpconnect|distilvit] [--bin]

nlpconnect: nlpconnect/vit-gpt2-image-captioning (ViT-B/16 + 12-layer GPT-2, 239.2 M parameters).
distilvit: Mozilla/distilvit (the same ViT-B/16 + 6-layer distilgpt2).
"""
import argparse
import collections
import os
import shutil

import torch
from transformers import (GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                          VisionEncoderDecoderModel)
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--shape", choices=["nlpconnect", "distilvit"], default="nlpconnect")
ap.add_argument("--bin", action="store_true", help="also write pytorch_model.bin as old checkpoints hold it")
args = ap.parse_args()

EOT = 50256
torch.manual_seed(0)
vit = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True)
gpt = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12 if args.shape == "nlpconnect" else 6,
                 n_head=12, n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 add_cross_attention=True, is_decoder=True, bos_token_id=EOT, eos_token_id=EOT,
                 pad_token_id=EOT, decoder_start_token_id=EOT)
config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt)
config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = config.bos_token_id = EOT
model = VisionEncoderDecoderModel(config=config).eval()
print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
os.makedirs(args.out, exist_ok=True)
model.save_pretrained(args.out, safe_serialization=True)
ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3,
                  image_std=[0.5] * 3).save_pretrained(args.out)
shutil.copy(os.path.join(ROOT, "tests", "fixtures", "hub_tiny", "tokenizer.json"), args.out)
if args.bin:
    state = collections.OrderedDict(load_file(os.path.join(args.out, "model.safetensors")))
    state["decoder.lm_head.weight"] = state["decoder.transformer.wte.weight"]
    torch.save(state, os.path.join(args.out, "pytorch_model.bin"))
print(f"wrote {args.out}")
