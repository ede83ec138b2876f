# Sourced by the benchmarks of a full-size Hub captioner (bench_caption.sh, bench_distill.sh): the
# release build, the project's .venv with torch and transformers, and a random model of
# nlpconnect/vit-gpt2-image-captioning's shape in $model (scripts/make_random_hub_model.py).
cargo build --release -q
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch, transformers, safetensors" 2>/dev/null || .venv/bin/pip install -q torch transformers safetensors pillow
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
model=target/bench/nlpconnect-random
[ -f "$model/model.safetensors" ] || .venv/bin/python scripts/make_random_hub_model.py --out "$model"
