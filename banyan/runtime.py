"""Python's cyclic garbage collector kept off the long-lived objects of a run.

Importing torch, tensordict, torchrl or transformers creates about a million objects that live as long
as the process. CPython's collector counts allocations: every ~700 new container objects it scans the
young generation, and every so often all three, walking every tracked object, the imported ones
included. On the 2-core box a 50k-step `rl train` (~8 s) made ~900 collections, six of them full ones,
0.4 s in all, most of it while its modules were being imported; with the collector paused for the
imports and the survivors frozen it made 110 young ones in ~15 ms, and the run took 0.8 s less.

- `paused_gc()`: no collections inside the block (the CLI wraps the import of a verb's modules); then
  everything alive is frozen (`gc.freeze`: moved to a permanent generation that collections skip) and
  the collector is switched back on if it was on before.
- `frozen_gc()`: for a training loop: the objects alive at its start (networks, optimizer, envs, the
  imports) are frozen for its duration and unfrozen afterwards, so a later collection can free them,
  which matters when one Python process trains many times (tests, notebooks); unless something was
  frozen before it (the CLI's imports), which then stays frozen with the rest.

Reference counting is unaffected: freezing only hides objects from the cycle collector, so an object
without references is still freed at once; only garbage cycles among frozen objects wait for an unfreeze
(which is why the CLI freezes in its own process only, not when `banyan.cli.main` is called from Python).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


@contextmanager
def frozen_gc() -> Iterator[None]:
    # gc.unfreeze() is all or nothing: when a caller had already frozen objects (the CLI's paused_gc
    # around the imports) they stay frozen, so the rest of that process's run does not walk them again
    outer = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not outer:
            gc.unfreeze()
