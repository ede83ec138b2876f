"""The gradients of step 1 of a run set up as `python -m amad_torch.distill` sets it up (its
arguments), alone or under torchrun: process 0 saves them, summed over the processes as the
optimiser sees them, to OUT/gradients.pt. For python/tests/test_distill.py."""
import os
import sys

import torch

from amad_torch.distill import Run, World, arguments


def main():
    a = arguments(sys.argv[1:])
    world = World()
    run = Run(a, world)
    run.backward(0)
    if world.rank == 0:
        names = {id(p): n for n, p in run.student.named_parameters()}
        grads = {names[id(p)]: p.grad.detach().clone() for p in run.params}
        torch.save(grads, os.path.join(a.out, "gradients.pt"))
    del run  # its DDP-wrapped student holds the process group (see World.close)
    world.close()


if __name__ == "__main__":
    main()
