"""banyan.runtime: the collector paused and frozen around imports, frozen around a loop, state restored."""

import gc

from banyan.runtime import frozen_gc, paused_gc


def test_paused_gc_blocks_collections_then_freezes_and_restores():
    gc.unfreeze()
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        keep = [[i] for i in range(1000)]
    assert gc.isenabled() and gc.get_freeze_count() >= len(keep)
    gc.unfreeze()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # stays as the caller had it
    finally:
        gc.enable()
        gc.unfreeze()


def test_frozen_gc_unfreezes_after_the_loop_even_on_error():
    gc.unfreeze()
    try:
        with frozen_gc():
            assert gc.get_freeze_count() > 0
            raise ValueError("stop")
    except ValueError:
        pass
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_frozen_gc_keeps_an_outer_freeze():
    gc.unfreeze()
    try:
        with paused_gc():
            pass
        before = gc.get_freeze_count()
        assert before > 0
        with frozen_gc():
            pass
        assert gc.get_freeze_count() >= before  # the CLI's freeze is not undone by the loop's
    finally:
        gc.unfreeze()
