"""Distils a student captioner from a teacher on your images, as `amad distill --images` does, in
PyTorch, alone or under torchrun with DistributedDataParallel.

    python -m amad_torch.distill --teacher DIR --images DIR --out DIR [options]
    torchrun --nproc_per_node 4 -m amad_torch.distill --teacher DIR --images DIR --out DIR ...

It follows amad's definitions step for step (docs/method.md), so that the two agree:
- the teacher captions each image once (greedy or as its generation settings say), kept in
  OUT/targets.jsonl by a hash of the image's bytes and the teacher's key, the same file and keys
  amad writes (a run is resumed only with the teacher that captioned its images);
- images are held out for validation, and batches drawn, with amad's rules and its generator, so
  that step s sees the same images in both;
- the loss is α·CE + β·T²·KD + γ·(mean over paired layers and kinds of the attention loss);
- checkpoints are Hugging Face checkpoints (config.json, model.safetensors, the teacher's
  tokenizer, preprocessor and generation settings) that the page, `amad caption` and transformers
  load, with metrics.jsonl and alignment.json as amad writes them.
`--batch` is the global batch: each of the N processes takes B/N of it, every loss is normalised
by the global counts, and the step equals a single process's.
"""
import argparse
import gc
import json
import math
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .losses import amad_loss, one_to_one_loss

IGNORE = -100
# amad's defaults (RunOptions::DISTILL, DistillConfig::default(), AdamW::default()).
DEFAULTS = dict(steps=2400, batch=32, lr=1e-3, warmup=100, decay_to=0.1, checkpoint_every=100,
                alpha=1.0, beta=1.0, gamma=1.0, temperature=2.0, tau=1.0, seed=1, val_fraction=0.1,
                method="amad-kl")
ADAMW = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
MAX_NORM = 1.0
METHODS = {  # method -> attention loss (None: none), as DistillConfig::with_method
    "ce": None, "kd": None, "one-to-one": "one-to-one", "amad-mse": "mse", "amad-kl": "kl", "amad-token": "token-kl",
}


class Rng:
    """amad's generator (xorshift64*, src/rng.rs), so that batches are drawn as amad draws them."""
    M = (1 << 64) - 1

    def __init__(self, seed):
        self.state = ((seed * 0x9E3779B97F4A7C15) & self.M) | 1

    def next_u64(self):
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & self.M
        x ^= x >> 27
        self.state = x
        return (x * 0x2545F4914F6CDD1D) & self.M

    def below(self, n):
        return self.next_u64() % n


# 64-bit FNV-1a, as amad's src/train/batch.rs has it: its offset basis and prime, and one step.
FNV_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv_step(h, x):
    return ((h ^ x) * FNV_PRIME) & Rng.M


def image_key(data):
    """FNV-1a of the image's bytes: the key of its caption in targets.jsonl (amad's image_key)."""
    h = FNV_BASIS
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & Rng.M  # fnv_step written out: a call per byte costs a fifth more
    return f"{h:016x}"


# amad's teacher key (src/train/batch.rs `teacher_key`): the files amad reads from a checkpoint
# directory, and the block size its hash takes them in.
OPTIONAL_FILES = ["tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "generation_config.json"]
KEY_BLOCK = 1 << 20


def words_hash(data):
    """amad's words_hash: FNV-1a over little-endian 64-bit words (the last zero-padded), then over
    the byte count."""
    h = FNV_BASIS
    for (w,) in struct.iter_unpack("<Q", bytes(data) + b"\0" * (-len(data) % 8)):
        h = fnv_step(h, w)
    return fnv_step(h, len(data))


def block_hashes(data):
    """words_hash of each KEY_BLOCK bytes of `data`: the whole blocks side by side in numpy (its
    uint64 products wrap, as FNV's do), a last part word by word."""
    whole = len(data) // KEY_BLOCK
    out = []
    if whole:
        words = np.frombuffer(data, dtype="<u8", count=whole * KEY_BLOCK // 8).reshape(whole, -1)
        h = np.full(whole, FNV_BASIS, dtype=np.uint64)
        prime = np.uint64(FNV_PRIME)
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * prime
        out = [int(x) for x in (h ^ np.uint64(KEY_BLOCK)) * prime]
    if len(data) % KEY_BLOCK:
        out.append(words_hash(data[whole * KEY_BLOCK:]))
    return out


def checkpoint_files(teacher_dir):
    """The files of a checkpoint directory amad reads (its Captioner::read_files): the configs,
    the tokenizer files present, and one weight format (safetensors, else the shards of a sharded
    one with their index, else pytorch_model.bin)."""
    has = lambda n: os.path.isfile(os.path.join(teacher_dir, n))  # noqa: E731
    names = [n for n in OPTIONAL_FILES + ["config.json", "preprocessor_config.json"] if has(n)]
    if has("model.safetensors"):
        names.append("model.safetensors")
    elif has("model.safetensors.index.json"):
        with open(os.path.join(teacher_dir, "model.safetensors.index.json")) as f:
            names += ["model.safetensors.index.json", *sorted(set(json.load(f)["weight_map"].values()))]
    elif has("pytorch_model.bin"):
        names.append("pytorch_model.bin")
    return names


def teacher_key(teacher_dir, precision="f32"):
    """amad's key of the teacher whose captions targets.jsonl keeps: over its files by name (the
    name's hash, each 1 MiB block's, the length) and the precision of its weights ("f32" here:
    amad_torch's teacher runs in f32)."""
    h = FNV_BASIS
    for name in sorted(checkpoint_files(teacher_dir)):
        with open(os.path.join(teacher_dir, name), "rb") as f:
            data = f.read()
        h = fnv_step(h, words_hash(name.encode()))
        for x in block_hashes(data):
            h = fnv_step(h, x)
        h = fnv_step(h, len(data))
    return f"{fnv_step(h, words_hash(precision.encode())):016x}"


def learning_rate(a, step):
    """amad's schedule: linear warm-up, then a cosine to decay_to times the peak."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(a.steps - a.warmup, 1)
    return a.lr * (a.decay_to + (1 - a.decay_to) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def layer_pairs(teacher_layers, student_layers):
    """Student layer j learns from teacher layer round((j+1)·Lt/Ls) − 1 (half away from zero)."""
    return [(j, min(max(math.floor((j + 1) * teacher_layers / student_layers + 0.5), 1), teacher_layers) - 1)
            for j in range(student_layers)]


def parse_sides(text):
    """N for both sides or E,D, as amad's --student-* flags."""
    parts = text.split(",")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not N or E,D (whole numbers)")
    e, d = (int(parts[0]), int(parts[-1]))
    return e, d


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m amad_torch.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher's directory (a Hub captioner, or one amad wrote)")
    p.add_argument("--images", required=True, help="the images to distil on; the teacher captions them")
    p.add_argument("--out", required=True, help="the run's directory; a run started again on it resumes")
    p.add_argument("--method", default=DEFAULTS["method"], choices=list(METHODS))
    p.add_argument("--student-init", help="start from this student checkpoint (amad's or amad_torch's)")
    for side in ("layers", "width", "heads"):
        p.add_argument(f"--student-{side}", type=parse_sides, help="N or E,D (default: amad's StudentShape::default_for)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--until", type=int, help="stop after step N, to continue later")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="the global batch, over all processes")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--decay-to", type=float, default=DEFAULTS["decay_to"])
    for name in ("alpha", "beta", "gamma", "temperature", "tau"):
        p.add_argument(f"--{name}", type=float, default=DEFAULTS[name])
    p.add_argument("--detach-weights", action="store_true")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--checkpoint-every", type=int, default=DEFAULTS["checkpoint_every"])
    p.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"])
    a = p.parse_args(argv)
    for name in ("steps", "batch", "checkpoint_every", "warmup"):
        if getattr(a, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be at least {0 if name == 'warmup' else 1}")
    if not 0 <= a.val_fraction < 1:
        p.error(f"--val-fraction must be at least 0 and below 1, got {a.val_fraction}")
    if a.student_init and (a.student_layers or a.student_width or a.student_heads):
        p.error("--student-init takes the student's sizes from its checkpoint: drop --student-layers/width/heads")
    if not (a.temperature > 0 and a.tau > 0) or min(a.alpha, a.beta, a.gamma) < 0:
        p.error("the temperatures must be positive and α, β, γ not negative")
    return a


class World:
    """The processes of a run: one, or torchrun's (gloo on CPUs, NCCL on GPUs). Under torchrun the
    processes form a group, and train through DDP, even when there is one (so that one GPU runs
    the NCCL path that many take)."""

    def __init__(self):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.backend = None
        if "WORLD_SIZE" in os.environ:
            self.backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(self.backend)

    def sum(self, x):
        """x summed over the processes (a tensor; a copy)."""
        x = x.detach().clone()
        if self.backend:
            torch.distributed.all_reduce(x)
        return x

    def say(self, *args, **kw):
        if self.rank == 0:
            print(*args, file=sys.stderr, **kw)

    def close(self):
        """Leaves the group once every process has come here. A gloo process that tears its group
        down while another still writes files, or whose group outlives this call (held by a DDP
        model until the interpreter exits), can die in gloo's threads (SIGABRT, "terminate called
        without an active exception"), which failed CI runs of the DDP test. So the caller drops
        its DDP models first, and what they leave in reference cycles is collected here."""
        if self.backend:
            gc.collect()
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def student_config(teacher_config, a):
    """The student's config as amad's StudentShape::default_for and Config::student_of make it:
    a quarter of the teacher's width and heads, a third of its encoder layers and a sixth of its
    decoder layers (at least 2 × 64 × 2), the rest the teacher's; --student-* override."""
    cfg = teacher_config.__class__.from_dict(teacher_config.to_dict())
    e, d = cfg.encoder, cfg.decoder

    def side(layers, width, heads, share):
        h = max(heads // 4, min(heads, 2), 1)
        w = max(width // 4, min(width, 64))
        h = next(x for x in range(h, 0, -1) if w % x == 0)
        return max(layers // share, min(layers, 2), 1), w, h

    enc = list(side(e.num_hidden_layers, e.hidden_size, e.num_attention_heads, 3))
    dec = list(side(d.n_layer, d.n_embd, d.n_head, 6))
    for i, given in enumerate((a.student_layers, a.student_width, a.student_heads)):
        if given:
            enc[i], dec[i] = given
    e_inter = e.intermediate_size * enc[1] // e.hidden_size
    d_inner = (d.n_inner or 4 * d.n_embd) * dec[1] // d.n_embd
    e.num_hidden_layers, e.hidden_size, e.num_attention_heads, e.intermediate_size = enc[0], enc[1], enc[2], e_inter
    d.n_layer, d.n_embd, d.n_head, d.n_inner = dec[0], dec[1], dec[2], d_inner
    if cfg.encoder.hidden_size % cfg.encoder.num_attention_heads or d.n_embd % d.n_head:
        raise SystemExit("amad_torch: each width must split into its heads")
    return cfg


def new_tokens(teacher_dir):
    """The teacher's caption length as amad reads it (Generation::from_configs): max_new_tokens, or
    max_length less the start token, from generation_config.json where there is one, else from
    config.json, else max_length 20; transformers' own default for encoder-decoders differs."""
    path = os.path.join(teacher_dir, "generation_config.json")
    if not os.path.exists(path):
        path = os.path.join(teacher_dir, "config.json")
    with open(path) as f:
        v = json.load(f)
    if v.get("max_new_tokens") is not None:
        return v["max_new_tokens"]
    return max((v.get("max_length") or 20) - 1, 0)


def load_images(a, teacher, processor, tokenizer, world):
    """The images' pixel values, keys and the teacher's captions (from OUT/targets.jsonl where
    there), in amad's order (file names sorted), unreadable files skipped with a message."""
    from PIL import Image

    names = sorted(os.path.join(a.images, f) for f in os.listdir(a.images) if os.path.isfile(os.path.join(a.images, f)))
    items = []
    for path in names:
        with open(path, "rb") as f:
            data = f.read()
        try:
            img = Image.open(path)
            img.load()
        except Exception as e:  # noqa: BLE001 - any decoding failure skips the file, as amad does
            world.say(f"amad_torch: {path}: not an image it can read ({e}) (skipped)")
            continue
        # Alpha flattened onto white, as amad does.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        items.append({"file": path, "key": image_key(data), "pixels": pixels})
    if not items:
        raise SystemExit(f"amad_torch: none of the {len(names)} files in {a.images} is an image it can read")
    cache_path = os.path.join(a.out, "targets.jsonl")
    key = teacher_key(a.teacher)
    cached = {}
    other_teacher = False
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            lines = f.readlines()
        for line in lines:
            try:
                v = json.loads(line)
                # A line without a teacher's key (written before captions were kept per teacher)
                # is captioned again, as one that does not parse: never trusted.
                if v.get("teacher") == key:
                    cached[v["key"]] = v["caption"]
                elif "teacher" in v:
                    other_teacher = True
            except (ValueError, KeyError, AttributeError):
                continue
    if other_teacher and os.path.exists(os.path.join(a.out, "train_state.safetensors")):
        raise SystemExit(f"amad_torch: {a.out} holds a run whose targets another teacher captioned (other files, or its "
                         f"weights at another precision; {cache_path} says so): resume it with that teacher, or give a new "
                         "--out to distil from this one")
    todo = [it for it in items if it["key"] not in cached]
    world.say(f"the teacher captions {len(todo)} of {len(items)} images ({len(items) - len(todo)} from {cache_path})")
    length = new_tokens(a.teacher)
    for start in range(0, len(todo), 8):
        chunk = todo[start:start + 8]
        with torch.no_grad():
            pixels = torch.stack([it["pixels"] for it in chunk]).to(world.device)
            ids = teacher.generate(pixel_values=pixels, max_new_tokens=length)
        for it, row in zip(chunk, ids):
            cached[it["key"]] = tokenizer.decode(row.tolist()).strip()
    for it in items:
        it["caption"] = cached[it["key"]]
    if world.rank == 0:
        os.makedirs(a.out, exist_ok=True)
        with open(cache_path, "w") as f:
            for it in items:
                f.write(json.dumps({"file": it["file"], "key": it["key"], "teacher": key, "caption": it["caption"]}) + "\n")
    return items


def split(items, fraction):
    """amad's ImageTargets::split: the images whose keys come first are held out."""
    n = len(items)
    held = max(math.floor(n * fraction + 0.5), 1) if fraction > 0 else 0
    if n <= held:
        raise SystemExit(f"amad_torch: {n} readable images are too few: distilling needs one to train on besides the {held} held out")
    order = sorted(range(n), key=lambda i: (items[i]["key"], items[i]["file"]))
    out = set(order[:held])
    return [it for i, it in enumerate(items) if i not in out], [it for i, it in enumerate(items) if i in out]


def caption_ids(config, tokenizer, caption, length):
    """Decoder inputs [start, w1 .. wn] and targets [w1 .. wn, eos], padded to `length`."""
    words = tokenizer.encode(caption)[: length - 1]
    ids = [config.decoder_start_token_id] + words
    labels = words + [config.eos_token_id]
    return ids + [config.pad_token_id] * (length - len(ids)), labels + [IGNORE] * (length - len(labels))


class Tokens:
    """The teacher's tokenizer.json, encoding without special tokens as amad does."""

    def __init__(self, directory):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)


def batch_for(step, train, length, config, tokens, global_batch, world):
    """amad's ImageTargets::batch for `step` (images drawn with replacement by amad's generator),
    this process's share of it."""
    rng = Rng(((step * 0x9E3779B9) & Rng.M) ^ 0x1A9E5)
    picks = [rng.below(len(train)) for _ in range(global_batch)]
    share = global_batch // world.size
    mine = picks[world.rank * share:(world.rank + 1) * share]
    ids, labels = zip(*(caption_ids(config, tokens, train[i]["caption"], length) for i in mine))
    pixels = torch.stack([train[i]["pixels"] for i in mine])
    return pixels.to(world.device), torch.tensor(ids, device=world.device), torch.tensor(labels, device=world.device)


def step_losses(a, teacher, student, pixels, ids, labels, world):
    """This process's part of the step's objective (normalised by the global counts, times the
    number of processes, since DDP averages gradients) and the terms for the log (global)."""
    b, length = ids.shape
    with torch.no_grad():
        t = teacher(pixel_values=pixels, decoder_input_ids=ids, output_attentions=True)
    s = student(pixel_values=pixels, decoder_input_ids=ids, output_attentions=True)
    valid = labels != IGNORE
    vocab = s.logits.shape[-1]
    # Global counts: valid positions, and examples.
    n_tok = world.sum(valid.sum().to(torch.float64)).clamp_min(1).to(s.logits.dtype)
    n_ex = float(a.batch)
    ce_sum = torch.nn.functional.cross_entropy(s.logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    lt = torch.log_softmax(t.logits / a.temperature, dim=-1)
    ls = torch.log_softmax(s.logits / a.temperature, dim=-1)
    kd_sum = ((lt.exp() * (lt - ls)).sum(-1) * valid).sum()
    ce, kd = ce_sum / n_tok, kd_sum / n_tok
    beta = 0.0 if a.method == "ce" else a.beta
    objective = a.alpha * ce + beta * a.temperature ** 2 * kd
    attn = torch.zeros((), dtype=s.logits.dtype, device=pixels.device)
    pairs_out = []
    kind = METHODS[a.method]
    if kind is not None:
        vf = valid.to(s.logits.dtype)
        masks = {
            "encoder": None,
            "decoder_self": vf[:, :, None] * vf[:, None, :],
            "cross": vf[:, :, None].expand(b, length, s.cross_attentions[0].shape[-1]),
        }
        enc = layer_pairs(len(t.encoder_attentions), len(s.encoder_attentions))
        dec = layer_pairs(len(t.decoder_attentions), len(s.decoder_attentions))
        jobs = [("encoder", p) for p in enc] + [("decoder_self", p) for p in dec] + [("cross", p) for p in dec]
        share = 1.0 / len(jobs)
        fields = {"encoder": "encoder_attentions", "decoder_self": "decoder_attentions", "cross": "cross_attentions"}
        for name, (js, jt) in jobs:
            tm, sm = getattr(t, fields[name])[jt], getattr(s, fields[name])[js]
            if kind == "one-to-one":
                loss, weights = one_to_one_loss(tm, sm, masks[name], "kl")
            else:
                loss, weights = amad_loss(tm, sm, masks[name], kind, a.tau, a.detach_weights)
            # amad_loss is a mean over this process's examples: as a share of the global batch.
            part = loss * b / n_ex
            attn = attn + share * part
            # This process's sum over its examples; summed over the processes only when saved.
            pairs_out.append((name, js, jt, weights.sum(0)))
        objective = objective + a.gamma * attn
    # One all-reduce for the three terms.
    ce_g, kd_g, attn_g = world.sum(torch.stack([ce.detach(), kd.detach(), attn.detach()])).tolist()
    terms = {"ce": ce_g, "kd": kd_g, "attn": attn_g}
    terms["total"] = a.alpha * terms["ce"] + beta * a.temperature ** 2 * terms["kd"] + a.gamma * terms["attn"]
    return objective * world.size, terms, pairs_out


def save(a, step, student, optimizer, teacher_dir, pairs, world):
    """A Hugging Face checkpoint of the student with the teacher's tokenizer, preprocessor and
    generation settings; the optimiser's state (train_state.safetensors, amad's names); the
    alignment weights of the step (alignment.json)."""
    if world.rank != 0:
        return
    model = student.module if hasattr(student, "module") else student
    model.save_pretrained(a.out, safe_serialization=True)
    for f in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        if os.path.exists(os.path.join(teacher_dir, f)):
            shutil.copy(os.path.join(teacher_dir, f), os.path.join(a.out, f))
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                state[f"m.{names[id(p)]}"] = st["exp_avg"].detach().cpu().contiguous()
                state[f"v.{names[id(p)]}"] = st["exp_avg_sq"].detach().cpu().contiguous()
    save_file(state, os.path.join(a.out, "train_state.safetensors"), metadata={"step": str(step)})
    with open(os.path.join(a.out, "alignment.json"), "w") as f:
        json.dump({"step": step, "pairs": [{"kind": k, "student_layer": js, "teacher_layer": jt, "weights": w.tolist()}
                                           for k, js, jt, w in pairs]}, f)


class Run:
    """A run set up: the teacher, the student (new, from --student-init, or resumed from OUT), the
    images with their captions, the optimiser, and the step to start from."""

    def __init__(self, a, world):
        from transformers import VisionEncoderDecoderModel, ViTImageProcessorPil
        from transformers.utils import logging as hf_logging

        # transformers warns that decoder inputs may be padded without an attention mask: padding
        # comes last and the attention is causal, so no valid position sees it (as in amad).
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        if a.batch % world.size:
            raise SystemExit(f"amad_torch: --batch {a.batch} does not split over {world.size} processes")
        self.a, self.world = a, world
        torch.manual_seed(a.seed)
        self.teacher = VisionEncoderDecoderModel.from_pretrained(a.teacher, attn_implementation="eager").to(world.device).eval()
        processor = ViTImageProcessorPil.from_pretrained(a.teacher)
        self.tokens = Tokens(a.teacher)
        resume = os.path.exists(os.path.join(a.out, "train_state.safetensors"))
        source = a.out if resume else a.student_init
        if source:
            student = VisionEncoderDecoderModel.from_pretrained(source, attn_implementation="eager")
        else:
            student = VisionEncoderDecoderModel(student_config(self.teacher.config, a))
        student.config._attn_implementation = "eager"
        # amad trains without dropout: eval mode turns it off (gradients flow as ever).
        student.to(world.device).eval()
        # Captioning never uses the ViT's pooler; amad keeps none, so it gets no gradient to share.
        pooler = getattr(student.encoder, "pooler", None)
        for p in (pooler.parameters() if pooler is not None else []):
            p.requires_grad_(False)
        self.student = student
        items = load_images(a, self.teacher, processor, self.tokens, world)
        self.train, self.held = split(items, a.val_fraction)
        longest = max(len(self.tokens.encode(it["caption"])) + 1 for it in items)
        self.length = max(min(longest, self.teacher.config.decoder.n_positions), 1)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=a.lr, **ADAMW)
        self.start = 0
        if resume:
            from safetensors import safe_open

            path = os.path.join(a.out, "train_state.safetensors")
            st = load_file(path)
            with safe_open(path, "pt") as f:
                self.start = int(f.metadata()["step"])
            for n, p in student.named_parameters():
                if f"m.{n}" in st:
                    self.optimizer.state[p] = {"step": torch.tensor(float(self.start)), "exp_avg": st[f"m.{n}"].to(world.device),
                                               "exp_avg_sq": st[f"v.{n}"].to(world.device)}
        self.model = student
        if world.backend:
            ids = [world.device.index] if world.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)

    def backward(self, step):
        """Step `step`'s gradients into the student's parameters (summed over the processes, as
        one process would have them); returns the step's terms and this process's sums of the
        alignment weights."""
        a = self.a
        pixels, ids, labels = batch_for(step, self.train, self.length, self.teacher.config, self.tokens, a.batch, self.world)
        objective, terms, pairs = step_losses(a, self.teacher, self.model, pixels, ids, labels, self.world)
        if not all(math.isfinite(v) for v in terms.values()):
            raise SystemExit(f"amad_torch: step {step + 1}: the loss is not finite ({terms}); stopped. Lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        return terms, pairs


def main(argv=None):
    a = arguments(argv)
    world = World()
    run = Run(a, world)
    world.say(f"training {sum(p.numel() for p in run.params)} parameters in {a.out} from step {run.start} of {a.steps}: "
              f"{len(run.train)} images to train on, {len(run.held)} held out; {world.size} process(es) on {world.device.type}"
              + (f" ({world.backend})" if world.backend else ""))
    log_path = os.path.join(a.out, "metrics.jsonl")
    if world.rank == 0:
        os.makedirs(a.out, exist_ok=True)
        kept = []
        if os.path.exists(log_path):
            with open(log_path) as f:
                kept = [line for line in f if json.loads(line).get("step", 0) <= run.start]
        with open(log_path, "w") as f:
            f.writelines(kept)
    end = min(a.steps, a.until) if a.until is not None else a.steps
    began = time.time()
    for step in range(run.start, end):
        lr = learning_rate(a, step)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        terms, pairs = run.backward(step)
        torch.nn.utils.clip_grad_norm_(run.params, MAX_NORM)
        run.optimizer.step()
        if world.rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "lr": lr, "losses": terms, "seconds": time.time() - began}) + "\n")
        world.say(f"\rstep {step + 1}/{a.steps} | " + " | ".join(f"{k} {v:.4f}" for k, v in terms.items()), end="")
        if (step + 1) % a.checkpoint_every == 0 or step + 1 == end:
            # The step's alignment weights, the mean over the global batch (every process takes part).
            pairs = [(k, js, jt, world.sum(w) / a.batch) for k, js, jt, w in pairs]
            save(a, step + 1, run.model, run.optimizer, a.teacher, pairs, world)
    world.say("")
    del run  # its DDP-wrapped student holds the process group (see World.close)
    world.close()


if __name__ == "__main__":
    main()
