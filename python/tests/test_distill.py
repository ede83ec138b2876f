"""`python -m amad_torch.distill` against `amad distill`, and under torchrun against itself.

The teacher is the tiny random captioner with GPT-2's vocabulary (tests/fixtures/hub_tiny), the
images the three photos of tests/fixtures/photos.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors.torch import load_file

from amad_torch.distill import KEY_BLOCK, block_hashes, teacher_key, words_hash
from test_losses import AMAD, NEED_AMAD, ROOT

TEACHER = os.path.join(ROOT, "tests", "fixtures", "hub_tiny")
PHOTOS = os.path.join(ROOT, "tests", "fixtures", "photos")
PYTHON = os.path.join(ROOT, "python")
# PYTHONFAULTHANDLER: a process that dies on a signal prints where it was.
ENV = {**os.environ, "PYTHONPATH": PYTHON + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "OMP_NUM_THREADS": "1",
       "PYTHONFAULTHANDLER": "1"}


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])}… failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def torch_distill(out, *args, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    return run(launcher + ["-m", "amad_torch.distill", "--teacher", TEACHER, "--images", PHOTOS, "--out", out,
                           "--val-fraction", "0", *args])


def metrics(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


class TeacherKey(unittest.TestCase):
    def test_blocks_hashed_side_by_side_as_one_by_one(self):
        data = bytes((i * 7 + i // 251) % 256 for i in range(2 * KEY_BLOCK + 13))
        blocks = [data[at:at + KEY_BLOCK] for at in range(0, len(data), KEY_BLOCK)]
        self.assertEqual(block_hashes(data), [words_hash(b) for b in blocks])
        self.assertEqual(block_hashes(data[:2 * KEY_BLOCK]), [words_hash(b) for b in blocks[:2]])
        self.assertEqual(block_hashes(b""), [])

    @unittest.skipUnless(NEED_AMAD or os.access(AMAD, os.X_OK), f"no amad binary at {AMAD}: cargo build --release")
    def test_the_key_is_the_one_amad_writes(self):
        with tempfile.TemporaryDirectory() as d:
            for half, precision in [([], "f32"), (["--teacher-half-weights"], "half weights")]:
                out = os.path.join(d, precision)
                run([AMAD, "distill", "--teacher", TEACHER, "--images", PHOTOS, "--out", out, "--steps", "1",
                     "--batch", "2", "--val-fraction", "0", *half])
                with open(os.path.join(out, "targets.jsonl")) as f:
                    keys = {json.loads(line)["teacher"] for line in f}
                self.assertEqual(keys, {teacher_key(TEACHER, precision)}, precision)
            # A teacher with one file changed is another teacher: amad_torch does not resume amad's
            # run with it, and leaves the run as it was.
            other = os.path.join(d, "other-teacher")
            shutil.copytree(TEACHER, other)
            with open(os.path.join(other, "config.json"), "a") as f:
                f.write("\n")
            out = os.path.join(d, "f32")
            with open(os.path.join(out, "targets.jsonl")) as f:
                targets = f.read()
            r = subprocess.run([sys.executable, "-m", "amad_torch.distill", "--teacher", other, "--images", PHOTOS,
                                "--out", out, "--steps", "2", "--batch", "2", "--val-fraction", "0"],
                               capture_output=True, text=True, env=ENV, timeout=600)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("another teacher captioned", r.stderr)
            with open(os.path.join(out, "targets.jsonl")) as f:
                self.assertEqual(f.read(), targets)


class Distill(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="amad-torch-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def assertTermsClose(self, a, b, rtol, what):
        for k in ("ce", "kd", "attn", "total"):
            self.assertLessEqual(abs(a[k] - b[k]), rtol * abs(b[k]) + 1e-7, f"{what}: {k} {a[k]} against {b[k]}")

    @unittest.skipUnless(NEED_AMAD or os.access(AMAD, os.X_OK), f"no amad binary at {AMAD}: cargo build --release")
    def test_step_one_agrees_with_amad_distill_and_each_reads_the_others_students(self):
        common = ["--images", PHOTOS, "--val-fraction", "0", "--batch", "3", "--steps", "1"]
        # A student amad wrote (after one step of its own) is where both start.
        run([AMAD, "distill", "--teacher", TEACHER, "--out", self.path("init"), *common])
        # Each method's own code path: the map-level KL, the token-level KL with a τ, the
        # one-to-one baseline, and output KD alone.
        for method, extra in [("amad-kl", []), ("amad-token", ["--tau", "0.5"]), ("one-to-one", []), ("kd", [])]:
            a_out, t_out = self.path(f"amad-{method}"), self.path(f"torch-{method}")
            args = [*common, "--student-init", self.path("init"), "--method", method, *extra]
            run([AMAD, "distill", "--teacher", TEACHER, "--out", a_out, *args])
            # The teacher's captions as amad made them, so that both train on the same targets.
            os.makedirs(t_out)
            shutil.copy(os.path.join(a_out, "targets.jsonl"), os.path.join(t_out, "targets.jsonl"))
            r = torch_distill(t_out, "--student-init", self.path("init"), "--batch", "3", "--steps", "1", "--method", method, *extra)
            # amad_torch keys the teacher as amad does, so it takes them all.
            self.assertIn("the teacher captions 0 of 3 images", r.stdout + r.stderr)
            a, t = metrics(a_out)[0], metrics(t_out)[0]
            self.assertEqual((a["step"], t["step"]), (1, 1))
            # One step of CE, KD and the attention term in f32 on lavapipe and in PyTorch on the CPU.
            self.assertTermsClose(t["losses"], a["losses"], 1e-5, f"{method}: step 1, amad_torch against amad")
        # amad_torch's student is a checkpoint amad captions with.
        r = run([AMAD, "caption", "--model", self.path("torch-amad-kl"), os.path.join(PHOTOS, "coffee.png")])
        self.assertTrue(r.stdout.startswith("coffee.png\t"), r.stdout)
        with open(self.path("torch-amad-kl/alignment.json")) as f:
            al = json.load(f)
        self.assertEqual(al["step"], 1)
        self.assertEqual({p["kind"] for p in al["pairs"]}, {"encoder", "decoder_self", "cross"})

    def test_two_processes_take_the_step_of_one_with_the_same_global_batch(self):
        # A new student (seed 3) of the teacher's default shape; the teacher captions the photos.
        args = ["--batch", "4", "--steps", "2", "--lr", "0.01", "--warmup", "1", "--seed", "3"]
        torch_distill(self.path("one"), *args)
        os.makedirs(self.path("two"))
        shutil.copy(self.path("one/targets.jsonl"), self.path("two/targets.jsonl"))
        torch_distill(self.path("two"), *args, processes=2)
        # The terms of step 2 come from the weights after step 1.
        for a, b in zip(metrics(self.path("two")), metrics(self.path("one"))):
            self.assertTermsClose(a["losses"], b["losses"], 1e-5, f"step {a['step']}, 2 processes against 1")
        # AdamW's first steps move each weight by about lr whatever its gradient's size, so the
        # weights cannot tell a gradient scaled wrong: the gradients themselves are compared.
        common = ["--teacher", TEACHER, "--images", PHOTOS, "--val-fraction", "0", "--batch", "4", "--seed", "3"]
        grads = {}
        for n in (1, 2):
            out = self.path(f"grads{n}")
            os.makedirs(out)
            shutil.copy(self.path("one/targets.jsonl"), os.path.join(out, "targets.jsonl"))
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else [sys.executable]
            run(launcher + [os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_gradients.py"), *common, "--out", out])
            grads[n] = torch.load(os.path.join(out, "gradients.pt"))
        self.assertEqual(grads[1].keys(), grads[2].keys())
        for name, g in grads[1].items():
            err = (grads[2][name] - g).abs().max().item()
            self.assertLessEqual(err, 1e-6 + 1e-5 * g.abs().max().item(), f"gradient of {name}: 2 processes against 1")

    def test_a_run_resumes_where_it_stopped(self):
        args = ["--batch", "2", "--steps", "3", "--lr", "0.01", "--warmup", "1", "--seed", "4"]
        torch_distill(self.path("whole"), *args)
        os.makedirs(self.path("parts"))
        shutil.copy(self.path("whole/targets.jsonl"), self.path("parts/targets.jsonl"))
        torch_distill(self.path("parts"), *args, "--until", "2")
        torch_distill(self.path("parts"), *args)
        self.assertEqual([m["step"] for m in metrics(self.path("parts"))], [1, 2, 3])
        whole, parts = load_file(self.path("whole/model.safetensors")), load_file(self.path("parts/model.safetensors"))
        worst = max((whole[k] - parts[k]).abs().max().item() for k in whole)
        self.assertLess(worst, 1e-6, "weights of a resumed run against an uninterrupted one")

    def test_bad_settings_are_named(self):
        r = subprocess.run([sys.executable, "-m", "amad_torch.distill", "--teacher", TEACHER, "--images", PHOTOS, "--out",
                            self.path("x"), "--student-init", TEACHER, "--student-width", "64"],
                           capture_output=True, text=True, env=ENV)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--student-init takes the student's sizes", r.stderr)
        r = subprocess.run([sys.executable, "-m", "amad_torch.distill", "--teacher", TEACHER, "--images", PHOTOS, "--out",
                            self.path("x"), "--val-fraction", "1"], capture_output=True, text=True, env=ENV)
        self.assertIn("--val-fraction must be at least 0 and below 1", r.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main()
