"""PyTorch eager, timed at the same work as `amad bench distill`: a Hub captioner's directory as the
teacher (transformers' VisionEncoderDecoderModel, eager attention), its default amad student
(4 × 192 × 3 + 2 × 192 × 3 for ViT-B + GPT-2: a quarter of the width and heads, a third and a sixth
of the layers), random pixels and token ids at batch B with captions of L positions:
  hub_teacher_forward        the teacher's forward with its attention maps, no gradients
  hub_distill_step_amad_kl   teacher forward, student forward and backward, CE + T²·KD + AMAD-KL over
                             all three attention kinds (mean over the paired layers), AdamW
Best of N after a warm-up. Prints JSON lines like amad's.
Usage: bench_distill_torch.py --teacher DIR [--batch 16] [--len 16] [--iters 2] [--device cuda]
"""
import argparse
import json
import os
import resource
import sys
import time

try:
    import torch
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from amad_torch import amad_loss
except ImportError:
    print("torch/transformers not installed: skipping the PyTorch distillation benchmark", file=sys.stderr)
    sys.exit(0)

args = argparse.ArgumentParser()
args.add_argument("--teacher", required=True)
args.add_argument("--batch", type=int, default=16)
args.add_argument("--len", type=int, default=16)
args.add_argument("--iters", type=int, default=2)
args.add_argument("--device", default="cpu")
args = args.parse_args()
B, L, DEV = args.batch, args.len, torch.device(args.device)

teacher = VisionEncoderDecoderModel.from_pretrained(args.teacher, attn_implementation="eager").to(DEV).eval()
te, td = teacher.config.encoder, teacher.config.decoder


def side(layers, width, heads, share):
    """amad's StudentShape::default_for, one side (MLPs keep the teacher's ratio, as Config::student_of)."""
    h = max(heads // 4, min(heads, 2), 1)
    w = max(width // 4, min(width, 64))
    h = next(x for x in range(h, 0, -1) if w % x == 0)
    return max(layers // share, min(layers, 2), 1), w, h


enc = side(te.num_hidden_layers, te.hidden_size, te.num_attention_heads, 3)
dec = side(td.n_layer, td.n_embd, td.n_head, 6)
vit = ViTConfig(image_size=te.image_size, patch_size=te.patch_size, hidden_size=enc[1], num_hidden_layers=enc[0],
                num_attention_heads=enc[2], intermediate_size=enc[1] * te.intermediate_size // te.hidden_size,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, hidden_act=te.hidden_act, layer_norm_eps=te.layer_norm_eps)
gpt = GPT2Config(vocab_size=td.vocab_size, n_positions=td.n_positions, n_embd=dec[1], n_layer=dec[0], n_head=dec[2],
                 n_inner=dec[1] * (td.n_inner or 4 * td.n_embd) // td.n_embd,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, add_cross_attention=True, is_decoder=True,
                 activation_function=td.activation_function, layer_norm_epsilon=td.layer_norm_epsilon,
                 bos_token_id=td.bos_token_id, eos_token_id=td.eos_token_id, pad_token_id=td.pad_token_id)
student = VisionEncoderDecoderModel(config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt)).to(DEV)
for c in (student.config, student.encoder.config, student.decoder.config):
    c._attn_implementation = "eager"
opt = torch.optim.AdamW(student.parameters(), lr=1e-3)

torch.manual_seed(0)
pixels = torch.rand(B, 3, te.image_size, te.image_size, device=DEV) * 2 - 1
ids = torch.randint(0, td.vocab_size, (B, L), device=DEV)
tokens = (te.image_size // te.patch_size) ** 2 + 1


def pairs(t, s):
    return [(j, min(max(round((j + 1) * t / s), 1), t) - 1) for j in range(s)]


enc_pairs, dec_pairs = pairs(te.num_hidden_layers, enc[0]), pairs(td.n_layer, dec[0])
valid = torch.ones(B, L, device=DEV)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def best(step):
    step()
    sync()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def teacher_forward():
    with torch.no_grad():
        return teacher(pixel_values=pixels, decoder_input_ids=ids, output_attentions=True)


def distill_step():
    opt.zero_grad()
    t = teacher_forward()
    s = student(pixel_values=pixels, decoder_input_ids=ids, labels=ids, output_attentions=True)
    T = 2.0
    kd = torch.nn.functional.kl_div(torch.log_softmax(s.logits / T, -1), torch.log_softmax(t.logits / T, -1),
                                    log_target=True, reduction="none").sum(-1).mean()
    self_mask = valid[:, :, None] * valid[:, None, :]
    cross_mask = valid[:, :, None].expand(B, L, tokens)
    attn, jobs = 0, 0
    for js, jt in enc_pairs:
        attn, jobs = attn + amad_loss(t.encoder_attentions[jt], s.encoder_attentions[js])[0], jobs + 1
    for js, jt in dec_pairs:
        attn = attn + amad_loss(t.decoder_attentions[jt], s.decoder_attentions[js], self_mask)[0]
        attn = attn + amad_loss(t.cross_attentions[jt], s.cross_attentions[js], cross_mask)[0]
        jobs += 2
    loss = s.loss + T * T * kd + attn / jobs
    loss.backward()
    opt.step()


shape = f"batch {B}, {tokens} + {L} tokens"
if DEV.type == "cuda":
    who = f"pytorch {torch.__version__} eager, CUDA on {torch.cuda.get_device_name()}"
else:
    who = f"pytorch {torch.__version__} eager, {torch.get_num_threads()} threads"
for name, fn in [("hub_teacher_forward", teacher_forward), ("hub_distill_step_amad_kl", distill_step)]:
    print(json.dumps({"name": name, "shape": shape, "ms": round(best(fn) * 1e3, 3), "gflops": None, "adapter": who}))
print(json.dumps({"peak_resident_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
