"""The shared Trainer on 2 gloo ranks: token-weighted accumulation and the meta-device zero3 build
(scenarios in trainer_checks.py, run by the one spawned worker of conftest.spawned)."""

from test_dist_parity import ok


def test_uneven_masks_give_one_process_gradients(spawned):
    _, results = spawned
    ok(results, "token_weighted")


def test_zero3_meta_build_allocates_only_shards(spawned):
    _, results = spawned
    ok(results, "meta_zero3")


def test_zero3_init_from_an_hf_folder_loads_exact_shards(spawned):
    _, results = spawned
    ok(results, "hf_zero3")
