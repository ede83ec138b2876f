"""amad_torch's losses against amad: the goldens of tests/fixtures/make_amad_golden.py (an
independent PyTorch reference, one example and one segment at a time), and `amad loss`, which runs
amad's WGSL kernels, on fresh random maps: loss, alignment weights and gradient.

    PYTHONPATH=python python -m unittest discover -s python/tests

`amad loss` is target/release/amad, or the binary AMAD_BIN names (cargo build --release makes it).
"""
import os
import subprocess
import tempfile
import unittest

import torch
from safetensors.torch import load_file, save_file

from amad_torch import AMADLoss, KDLoss, OneToOneLoss, amad_loss, kd_loss, one_to_one_loss

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
AMAD = os.environ.get("AMAD_BIN", os.path.join(ROOT, "target", "release", "amad"))
# Where AMAD_BIN is set (the test suite sets it), the comparison with `amad loss` must run.
NEED_AMAD = "AMAD_BIN" in os.environ

# The configurations of the goldens: name -> (variant, tau, detached weights).
CONFIGS = {
    "mse": ("mse", 1.0, False),
    "kl": ("kl", 1.0, False),
    "token-kl": ("token-kl", 1.0, False),
    "kl.tau0.1": ("kl", 0.1, False),
    "mse.detached": ("mse", 1.0, True),
    "token-kl.tau0.5.detached": ("token-kl", 0.5, True),
    "one-to-one-kl": ("one-to-one-kl", 1.0, False),
    "one-to-one-mse": ("one-to-one-mse", 1.0, False),
}


def run(teacher, student, mask, variant, tau=1.0, detach=False):
    """(loss, weights, gradient with respect to the student maps), in float64."""
    s = student.detach().double().clone().requires_grad_(True)
    t, m = teacher.double(), None if mask is None else mask.double()
    if variant.startswith("one-to-one-"):
        loss, weights = one_to_one_loss(t, s, m, kind=variant[len("one-to-one-"):])
    else:
        loss, weights = amad_loss(t, s, m, variant, tau, detach)
    loss.backward()
    return loss.detach(), weights, s.grad


def maps(b, h, q, k, causal, gen):
    logits = 2 * torch.rand(b, h, q, k, generator=gen, dtype=torch.float64)
    if causal:
        logits = logits.masked_fill(torch.triu(torch.ones(q, k, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(logits, dim=-1)


class Close:
    def assertClose(self, what, got, want, atol, rtol):
        got, want = got.double(), want.double()
        self.assertFalse(bool(got.isnan().any() or want.isnan().any()), f"{what}: NaN")
        err = (got - want).abs() - (atol + rtol * want.abs())
        i = int(err.argmax())
        self.assertLessEqual(float(err.flatten()[i]), 0.0,
                             f"{what}: element {i}: got {float(got.flatten()[i])}, want {float(want.flatten()[i])}")


class Goldens(unittest.TestCase, Close):
    def test_every_configuration_matches_the_reference(self):
        g = load_file(os.path.join(ROOT, "tests", "fixtures", "amad_golden.safetensors"))
        for case in ("padded", "causal", "single"):
            t, s, m = (g[f"{case}.{n}"] for n in ("teacher", "student", "mask"))
            for name, (variant, tau, detach) in CONFIGS.items():
                loss, weights, grad = run(t, s, m, variant, tau, detach)
                what = f"{case} {name}"
                # The goldens are f64 results stored as f32: 1e-6 relative covers their rounding.
                self.assertClose(f"{what}: loss", loss, g[f"{case}.{name}.loss"], 1e-7, 1e-6)
                self.assertClose(f"{what}: weights", weights, g[f"{case}.{name}.weights"], 1e-7, 1e-6)
                self.assertClose(f"{what}: gradient", grad, g[f"{case}.{name}.grad_student"], 1e-6, 1e-6)


@unittest.skipUnless(NEED_AMAD or os.access(AMAD, os.X_OK), f"no amad binary at {AMAD}: cargo build --release")
class AgainstAmadLoss(unittest.TestCase, Close):
    """Fresh maps through `amad loss` (WGSL in f32) and through amad_torch (f64 here)."""

    def amad(self, teacher, student, mask, variant, tau, detach):
        with tempfile.TemporaryDirectory() as d:
            inp, out = os.path.join(d, "maps.safetensors"), os.path.join(d, "out.safetensors")
            tensors = {"teacher": teacher.float().contiguous(), "student": student.float().contiguous()}
            if mask is not None:
                tensors["mask"] = mask.float().contiguous()
            save_file(tensors, inp)
            args = [AMAD, "loss", "--input", inp, "--output", out, "--variant", variant, "--tau", str(tau)]
            if detach:
                args.append("--detach-weights")
            r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")})
            self.assertEqual(r.returncode, 0, r.stderr)
            o = load_file(out)
            return o["loss"].reshape(()), o["weights"], o["grad_student"]

    def test_random_maps_agree_in_loss_weights_and_gradient(self):
        gen = torch.Generator().manual_seed(7)
        cases = [
            # (B, Ht, Hs, q, k, causal, padding)
            (3, 6, 2, 5, 9, False, True),  # fewer student heads, padded rows and keys
            (2, 4, 4, 7, 7, True, False),  # equal heads, causal zeros
            (2, 3, 5, 4, 6, False, True),  # more student heads than teacher heads
        ]
        runs = [("mse", 1.0, False), ("kl", 1.0, False), ("token-kl", 1.0, False), ("kl", 0.3, True),
                ("token-kl", 2.0, False), ("one-to-one-kl", 1.0, False), ("one-to-one-mse", 1.0, False)]
        for b, ht, hs, q, k, causal, pad in cases:
            t, s = maps(b, ht, q, k, causal, gen), maps(b, hs, q, k, causal, gen)
            # f32 maps, as amad reads them, so both sides see the same numbers.
            t, s = t.float().double(), s.float().double()
            mask = None
            if pad:
                mask = torch.ones(b, q, k, dtype=torch.float64)
                mask[-1, -2:, :] = 0
                mask[-1, :, -3:] = 0
            for variant, tau, detach in runs:
                what = f"B{b} Ht{ht} Hs{hs} q{q} k{k} {variant} tau {tau}{' detached' if detach else ''}"
                loss, weights, grad = run(t, s, mask, variant, tau, detach)
                a_loss, a_weights, a_grad = self.amad(t, s, mask, variant, tau, detach)
                # amad works in f32 over at most 63 cells and 6 heads: 1e-5 relative on the loss,
                # 1e-6 absolute on weights in [0, 1], 1e-5 on gradients of order 1.
                self.assertClose(f"{what}: loss", a_loss, loss, 1e-6, 1e-5)
                self.assertClose(f"{what}: weights", a_weights, weights, 1e-6, 0.0)
                self.assertClose(f"{what}: gradient", a_grad, grad, 1e-5, 1e-5)


class Definitions(unittest.TestCase, Close):
    def test_gradients_are_finite_differences_at_causal_zeros_and_padding(self):
        gen = torch.Generator().manual_seed(3)
        t, s = maps(2, 3, 4, 4, True, gen), maps(2, 2, 4, 4, True, gen).requires_grad_(True)
        mask = torch.ones(2, 4, 4, dtype=torch.float64)
        mask[1, -1, :] = 0
        for variant in ("mse", "kl", "token-kl"):
            torch.autograd.gradcheck(lambda x: amad_loss(t, x, mask, variant, 0.7)[0], (s,))
        for kind in ("kl", "mse"):
            torch.autograd.gradcheck(lambda x: one_to_one_loss(t, x, mask, kind)[0], (s,))

    def test_kd_is_the_mean_kl_of_the_softened_distributions_over_valid_positions(self):
        gen = torch.Generator().manual_seed(5)
        zt, zs = (torch.randn(3, 4, 11, generator=gen, dtype=torch.float64) for _ in range(2))
        valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
        temp = 2.0
        per = torch.nn.functional.kl_div(torch.log_softmax(zs / temp, -1), torch.log_softmax(zt / temp, -1),
                                         log_target=True, reduction="none").sum(-1)
        self.assertClose("kd", kd_loss(zt, zs, valid, temp), per[valid].mean(), 1e-12, 1e-12)
        self.assertClose("kd, all valid", KDLoss(temp)(zt, zs), per.mean(), 1e-12, 1e-12)

    def test_modules_give_the_functions_results(self):
        gen = torch.Generator().manual_seed(1)
        t, s = maps(2, 4, 3, 5, False, gen), maps(2, 2, 3, 5, False, gen)
        for variant in ("mse", "kl", "token-kl"):
            self.assertEqual(AMADLoss(variant, 0.5)(t, s)[0].item(), amad_loss(t, s, None, variant, 0.5)[0].item())
        self.assertEqual(OneToOneLoss("mse")(t, s)[0].item(), one_to_one_loss(t, s, None, "mse")[0].item())

    def test_permuting_student_heads_leaves_the_loss_unchanged(self):
        gen = torch.Generator().manual_seed(2)
        t, s = maps(2, 5, 4, 6, False, gen), maps(2, 3, 4, 6, False, gen)
        for variant in ("mse", "kl", "token-kl"):
            a, _ = amad_loss(t, s, None, variant)
            b, _ = amad_loss(t, s[:, [2, 0, 1]], None, variant)
            self.assertClose(variant, a, b, 1e-12, 1e-12)

    def test_bad_arguments_are_named(self):
        t = torch.rand(2, 3, 4, 4)
        with self.assertRaisesRegex(ValueError, "unknown variant 'l2'"):
            amad_loss(t, t, variant="l2")
        with self.assertRaisesRegex(ValueError, "tau must be positive"):
            amad_loss(t, t, tau=0)
        with self.assertRaisesRegex(ValueError, r"differ in B, q or k"):
            amad_loss(t, torch.rand(2, 3, 4, 5))
        with self.assertRaisesRegex(ValueError, r"mask must be \[B, q, k\]"):
            amad_loss(t, t, torch.ones(2, 4))
        with self.assertRaisesRegex(ValueError, "unknown kind"):
            one_to_one_loss(t, t, kind="l1")
        with self.assertRaisesRegex(ValueError, "temperature must be positive"):
            kd_loss(t, t, temperature=0)


if __name__ == "__main__":
    unittest.main()
