"""2 gloo ranks vs one process with the same global batch: the loss trajectory of every strategy matches,
checkpoints written on 2 ranks resume on 1 rank or under another strategy, and bad input stops every
rank with one message from rank 0 and nothing written."""

import json
import math

import pytest
import torch

from dist_helpers import STEPS, losses, rewind, tiny_run, val_losses

REL = 1e-5


def assert_close_traj(got: dict, ref: dict, steps):
    assert sorted(got) == list(steps), sorted(got)
    for s in steps:
        assert math.isclose(got[s], ref[s], rel_tol=REL), (s, got[s], ref[s])


def ok(results, name):
    for r, res in enumerate(results):
        assert res[name]["ok"], f"rank {r}: {res[name]}"


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3"])
def test_two_ranks_match_one_process(spawned, reference, strategy):
    root, results = spawned
    ok(results, strategy)
    ref = losses(reference)
    assert_close_traj(losses(root / strategy), ref, range(1, STEPS + 1))
    assert_close_traj(val_losses(root / strategy), val_losses(reference), [5, 10])
    # the trajectory is not flat: a broken gradient sync would show
    assert ref[STEPS] < ref[1] - 0.3


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_gradient_accumulation_matches(spawned, reference_accum, reference, strategy):
    """no_sync on the first micro-step (DDP) / set_requires_gradient_sync (FSDP) loses nothing."""
    root, results = spawned
    ok(results, f"{strategy}_accum")
    ref = losses(reference_accum)
    assert_close_traj(losses(root / f"{strategy}_accum"), ref, range(1, STEPS + 1))
    assert abs(ref[STEPS] - losses(reference)[STEPS]) > 1e-3  # a different run from the one without accumulation


def test_fsdp_bf16_mixed_precision_trains(spawned, reference):
    root, results = spawned
    ok(results, "zero3_bf16")
    got, ref = losses(root / "zero3_bf16"), losses(reference)
    assert got[1] == pytest.approx(ref[1], rel=2e-2)  # bf16 weights: close, not equal
    assert got[STEPS] == pytest.approx(ref[STEPS], rel=3e-2) and got[STEPS] < got[1] - 0.3


def test_sharded_checkpoint_layout(spawned):
    root, _ = spawned
    ck = root / "zero3" / "checkpoints" / "step_000010"
    assert (ck / "dcp" / ".metadata").is_file()
    assert sorted(p.name for p in (ck / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (ck / "rng_rank0.pt").is_file() and (ck / "rng_rank1.pt").is_file()
    meta = json.loads((ck / "trainer.json").read_text())
    assert meta["format"] == "dcp" and meta["world_size"] == 2 and meta["strategy"] == "zero3"
    assert not list((root / "zero3" / "checkpoints").glob("*.tmp*"))


@pytest.mark.parametrize("strategy", ["zero3", "zero1", "ddp"])
def test_save_on_two_resume_on_one(spawned, reference, dist_data, tmp_path, strategy):
    """Sharded step-5 checkpoint of 2 ranks (micro_batch 2) -> one process (micro_batch 4), model + optimizer."""
    from banyan.train.pretrain import train

    root, results = spawned
    ok(results, strategy)
    out = tmp_path / f"{strategy}_on_one"
    rewind(root / strategy, out, 5)
    train(tiny_run(dist_data, out, 4, "single", resume=True))
    got, ref = losses(out), losses(reference)
    assert_close_traj(got, ref, range(1, STEPS + 1))  # steps 1-5 kept from the 2-rank run, 6-10 resumed
    # a fresh optimizer (no AdamW moments) would not follow the same path
    assert math.isclose(got[6], ref[6], rel_tol=REL)


@pytest.mark.parametrize("name", ["zero3_to_ddp", "ddp_to_zero2", "one_to_zero3", "one_to_zero1"])
def test_resume_under_another_strategy(spawned, reference, name):
    root, results = spawned
    ok(results, name)
    assert_close_traj(losses(root / name), losses(reference), range(1, STEPS + 1))


def test_consolidate_matches_single_process_weights(spawned, reference, tmp_path):
    from safetensors.torch import load_file

    from banyan.train.consolidate import main as consolidate_main

    root, _ = spawned
    target = tmp_path / "zero3.safetensors"
    assert consolidate_main(["--ckpt", str(root / "zero3"), "--out", str(target)]) == 0
    got = load_file(str(target))
    want = load_file(str(reference / "checkpoints" / "step_000010" / "model.safetensors"))
    assert sorted(got) == sorted(want)  # same names, tied head stored once as in one-process checkpoints
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_consolidate_refuses_unsharded(reference):
    from banyan.train.checkpoint import CheckpointError
    from banyan.train.consolidate import consolidate

    with pytest.raises(CheckpointError, match="not sharded"):
        consolidate(reference)


def _stopped(results, name, match):
    """Rank 0 raised a clear error naming the problem; rank 1 exited quietly."""
    r0, r1 = results[0][name], results[1][name]
    assert not r0["ok"] and r0["type"] != "QuietExit", r0
    assert match in r0["msg"], r0["msg"]
    assert r1 == {"ok": False, "type": "QuietExit", "msg": ""}, r1


def test_mismatched_configs_across_ranks(spawned):
    root, results = spawned
    _stopped(results, "mismatch", "optim.lr: rank 0 has 0.003, rank 1 has 0.001")
    assert not (root / "bad_mismatch" / "config.toml").exists()


def test_global_batch_must_divide(spawned):
    root, results = spawned
    _stopped(results, "global_batch", "micro_batch*seq_len*world_size = 2*32*2")
    assert not (root / "bad_batch" / "config.toml").exists()


def test_cpu_offload_needs_cuda(spawned):
    _, results = spawned
    _stopped(results, "offload_on_cpu", "parallel.cpu_offload")


def test_resume_with_wrong_model_writes_nothing(spawned):
    root, results = spawned
    _stopped(results, "wrong_model", "model.n_layer is 2 there, 3 in this run")
    run = root / "bad_model"
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_000005"]
    assert "n_layer = 2" in (run / "config.toml").read_text()
    assert max(losses(run)) == STEPS  # metrics untouched (not trimmed to step 5)


def test_bench_collectives_checked(spawned):
    _, results = spawned
    ok(results, "bench")


def test_sigterm_on_one_rank_stops_all_at_the_same_step(spawned, reference):
    from banyan.train import checkpoint as ckpt

    root, results = spawned
    ok(results, "sigterm_rank1")
    run = root / "sigterm"
    assert ckpt.latest_checkpoint(run).name == "step_000004"
    assert json.loads((run / "summary.json").read_text())["step"] == 4
    assert_close_traj(losses(run), losses(reference), range(1, 5))


def test_lora_zero3_matches_one_process_resumes_on_one_and_exports(spawned, dist_data, tmp_path):
    """LoRA on 2 zero3 ranks == one process; its DCP checkpoint holds the adapters (+ optimizer) only,
    resumes on one process and exports (merged) to the one-process run's weights."""
    from torch.distributed.checkpoint import FileSystemReader

    from banyan.export.source import load_source
    from banyan.train.pretrain import train
    from dist_helpers import LORA

    root, results = spawned
    ok(results, "zero3_lora")
    ref = tmp_path / "lora_ref"
    train(tiny_run(dist_data, ref, 4, "single", lora=LORA))
    assert_close_traj(losses(root / "zero3_lora"), losses(ref), range(1, STEPS + 1))
    ck = root / "zero3_lora" / "checkpoints" / "step_000010"
    keys = FileSystemReader(str(ck / "dcp")).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all(k.endswith(("lora_A", "lora_B")) for k in model_keys)
    assert json.loads((ck / "trainer.json").read_text())["lora_seed"] == 1337
    mine, theirs = load_source(ck), load_source(ref)
    x = torch.randint(0, mine.cfg.model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (mine.model(x) - theirs.model(x)).abs().max().item()
    assert diff <= 1e-5
    out = tmp_path / "lora_on_one"
    rewind(root / "zero3_lora", out, 5)
    train(tiny_run(dist_data, out, 4, "single", resume=True, lora=LORA))
    assert_close_traj(losses(out), losses(ref), range(1, STEPS + 1))
