"""PyTorch eager on the CPU, timed at the same steps as `amad bench step`: one teacher training step
(AdamW, output_attentions) and one distillation step (teacher forward, student forward and backward,
CE + T²·KD + AMAD-KL over all three attention kinds, AdamW), default configs, batch 32. Prints JSON
lines like amad's. Skipped (with a message) where torch is not installed.
Usage: bench_step_torch.py [BATCH] [--device cuda] [--iters N] (scripts/bench_gpu.sh runs it on the GPU).
"""
import argparse
import json
import os
import sys
import time

try:
    import torch
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from amad_torch import amad_loss
except ImportError:
    print("torch/transformers not installed: skipping the PyTorch step benchmark", file=sys.stderr)
    sys.exit(0)

args = argparse.ArgumentParser()
args.add_argument("batch", nargs="?", type=int, default=32)
args.add_argument("--device", default="cpu")
args.add_argument("--iters", type=int, default=3)
args = args.parse_args()
VOCAB, LEN, BATCH, DEV = 64, 16, args.batch, torch.device(args.device)


def model(enc, dec):
    vit = ViTConfig(image_size=64, patch_size=8, hidden_size=enc[1], num_hidden_layers=enc[0],
                    num_attention_heads=enc[2], intermediate_size=4 * enc[1], hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    gpt = GPT2Config(vocab_size=VOCAB, n_positions=LEN, n_embd=dec[1], n_layer=dec[0], n_head=dec[2],
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, add_cross_attention=True, is_decoder=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m = VisionEncoderDecoderModel(config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt))
    for c in (m.config, m.encoder.config, m.decoder.config):
        c._attn_implementation = "eager"
    return m


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(step, iters=args.iters):
    step()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - t) / iters


torch.manual_seed(0)
torch.set_num_threads(torch.get_num_threads())
teacher, student = model((4, 128, 8), (4, 128, 8)).to(DEV), model((2, 64, 2), (2, 64, 2)).to(DEV)
pixels = torch.randn(BATCH, 3, 64, 64, device=DEV)
ids = torch.randint(0, VOCAB, (BATCH, LEN), device=DEV)
topt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
sopt = torch.optim.AdamW(student.parameters(), lr=1e-3)


def teacher_step():
    topt.zero_grad()
    out = teacher(pixel_values=pixels, decoder_input_ids=ids, labels=ids, output_attentions=True)
    out.loss.backward()
    topt.step()


pairs = [(0, 1), (1, 3)]  # student layer j <- teacher layer round((j+1)*4/2) - 1
valid = torch.ones(BATCH, LEN, device=DEV)


def distill_step():
    sopt.zero_grad()
    with torch.no_grad():
        t = teacher(pixel_values=pixels, decoder_input_ids=ids, output_attentions=True)
    s = student(pixel_values=pixels, decoder_input_ids=ids, labels=ids, output_attentions=True)
    T = 2.0
    kd = torch.nn.functional.kl_div(torch.log_softmax(s.logits / T, -1), torch.log_softmax(t.logits / T, -1),
                                    log_target=True, reduction="none").sum(-1).mean()
    self_mask = valid[:, :, None] * valid[:, None, :]
    cross_mask = valid[:, :, None].expand(BATCH, LEN, 65)
    attn = 0
    for js, jt in pairs:
        attn = attn + amad_loss(t.encoder_attentions[jt], s.encoder_attentions[js])[0]
        attn = attn + amad_loss(t.decoder_attentions[jt], s.decoder_attentions[js], self_mask)[0]
        attn = attn + amad_loss(t.cross_attentions[jt], s.cross_attentions[js], cross_mask)[0]
    loss = s.loss + T * T * kd + attn / (3 * len(pairs))
    loss.backward()
    sopt.step()


shape = f"batch {BATCH}, 65 + {LEN} tokens"
if DEV.type == "cuda":
    who = f"pytorch {torch.__version__} eager, CUDA on {torch.cuda.get_device_name()}"
else:
    who = f"pytorch {torch.__version__} eager, {torch.get_num_threads()} threads"
for name, fn in [("teacher_train_step", teacher_step), ("distill_step_amad_kl", distill_step)]:
    print(json.dumps({"name": name, "shape": shape, "ms": round(timed(fn) * 1e3, 3), "gflops": None, "adapter": who}))
