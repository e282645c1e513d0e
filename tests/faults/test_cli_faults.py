"""Faults a user can type: every bad number, file or launch is one line on stderr and exit code 2.

Each case ran into a traceback, a wrong result or a late error on main before this file existed
(issue 16, items 9-12). The CLI runs in-process (banyan.cli.main); nothing here trains for long.
"""

import pytest

from banyan.cli import main as cli

TINY = ["--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2", "--train.seq_len", "16",
        "--model.max_seq_len", "16", "--train.micro_batch", "2"]


@pytest.fixture(scope="module")
def tiny_data(make_char_corpus):
    text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n") * 40
    return make_char_corpus("faults_corpus", text, 50)


def one_line(capsys, argv):
    rc = cli(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    return rc, err


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything tries to start torchrun; record the argv it would have got."""
    import banyan.parallel.launch as launch

    calls = []
    monkeypatch.setattr(launch, "launch_torchrun", lambda n, args, **kw: calls.append((n, args)) or 0)
    return calls


@pytest.mark.parametrize("argv,message", [
    (["bench", "train", *TINY, "--steps", "0"], "--steps must be >= 1, got 0"),
    (["bench", "train", *TINY, "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["bench", "train", *TINY, "--optim.lr", "nan"], "--optim.lr must be a finite number, got nan"),
    (["plan", "--model", "llama-125m", "--vocab_size", "100", "--gpus", "1xh100", "--seq", "0"],
     "--seq must be >= 1, got 0"),
    (["plan", "--model", "llama-125m", "--vocab_size", "100", "--gpus", "1xh100", "--mfu", "nan"],
     "--mfu must be a finite number, got nan"),
    (["bench", "comm", "--min_mb", "0"], "--min_mb must be >= 1e-06, got 0.0"),
    (["bench", "comm", "--min_mb", "8", "--max_mb", "2"], "need 0 < min_mb <= max_mb"),
    (["bench", "comm", "--nproc", "2", "--factor", "1"], "--factor must be >= 2, got 1"),
    (["pretrain", "--nproc", "2", "--model.n_layer", "0"], "--model.n_layer must be >= 1, got 0"),
    (["sample", "--num_samples", "0"], "--num_samples must be >= 1, got 0"),
])
def test_bad_numbers_are_one_line_before_any_launch(capsys, no_launch, argv, message):
    rc, err = one_line(capsys, argv)
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert no_launch == []


def test_bench_comm_nproc_is_kept_from_torchrun(capsys, no_launch):
    assert cli(["bench", "comm", "--nproc", "2", "--max_mb", "1"]) == 0
    assert no_launch == [(2, ["bench", "comm", "--max_mb", "1"])]  # no '--nproc' for torchrun to choke on
    assert cli(["bench", "comm", "--nproc=3"]) == 0 and no_launch[-1] == (3, ["bench", "comm"])


def test_torchrun_accepts_the_bench_comm_command():
    """torchrun's own parser (the reference): a '--nproc' left in the ranks' argv is 'ambiguous' to it."""
    from torch.distributed.run import get_args_parser

    from banyan.parallel.launch import drop_option, torchrun_command

    parser = get_args_parser()
    argv = ["bench", "comm", "--nproc", "2", "--max_mb", "1"]
    with pytest.raises(SystemExit):
        parser.parse_args(torchrun_command(2, argv)[3:])  # what main did before
    args = parser.parse_args(torchrun_command(2, drop_option(argv, "--nproc"))[3:])
    assert args.nproc_per_node == "2" and args.training_script_args == ["bench", "comm", "--max_mb", "1"]


def test_a_toml_recipe_is_range_checked_by_plan(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nn_layer = -4\nvocab_size = 100\n")
    rc, err = one_line(capsys, ["plan", "--config", str(bad), "--gpus", "1xh100"])
    assert rc == 2 and err == [f"banyan plan: error: {bad}: --model.n_layer must be >= 1, got -4"]


def test_plan_suggests_config_file_for_a_toml_recipe(tmp_path, capsys):
    good = tmp_path / "mine.toml"
    good.write_text("[model]\nn_layer = 2\nd_model = 64\nn_head = 2\nvocab_size = 100\n")
    assert cli(["plan", "--config", str(good), "--gpus", "1xh100"]) == 0
    out = capsys.readouterr().out
    assert f"banyan pretrain --config {good} " in out and "--preset mine" not in out
    assert cli(["plan", "--model", "llama-125m", "--vocab_size", "100", "--gpus", "1xh100"]) == 0
    assert "banyan pretrain --preset llama-125m " in capsys.readouterr().out


def test_bench_json_out_folder_is_refused_before_the_benchmark(tmp_path, capsys, monkeypatch):
    import banyan.train.bench as bench

    monkeypatch.setattr(bench, "bench", lambda cfg: pytest.fail("benchmark ran"))
    rc, err = one_line(capsys, ["bench", "train", *TINY, "--json_out", str(tmp_path)])
    assert rc == 2 and len(err) == 1 and f"--json_out '{tmp_path}' is a folder" in err[0]


@pytest.mark.parametrize("exc,hint", [
    (PermissionError(13, "Permission denied", "/data/ro/run"), "no permission to write there"),
    (IsADirectoryError(21, "Is a directory", "/tmp/out"), "a folder where a file was expected"),
    (OSError(30, "Read-only file system", "/mnt/ro/run"), "no permission to write there"),
])
def test_os_errors_of_any_verb_are_one_line(capsys, monkeypatch, exc, hint):
    import banyan.train.sample as sample

    def boom(argv):
        raise exc

    monkeypatch.setattr(sample, "main", boom)
    rc, err = one_line(capsys, ["sample"])
    assert rc == 2 and len(err) == 1 and hint in err[0]
    assert err[0].startswith(f"banyan sample: error: {exc.strerror} '{exc.filename}'")


def test_wandb_that_fails_to_start_is_one_line_without_the_key(tmp_path, monkeypatch):
    import wandb

    from banyan.config import LogConfig
    from banyan.errors import BanyanError
    from banyan.logger import init_wandb

    def rejected(**kw):
        raise wandb.errors.AuthenticationError("API key sekrit-123 rejected\ntraceback noise")

    monkeypatch.setattr(wandb, "init", rejected)
    monkeypatch.setenv("WANDB_API_KEY", "sekrit-123")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(BanyanError) as e:
        init_wandb(tmp_path, LogConfig(wandb=True), {}, resume=False)
    msg = str(e.value)
    assert "W&B could not start a online run" in msg and "AuthenticationError" in msg
    assert "sekrit" not in msg and "\n" not in msg


def test_a_failed_wandb_start_leaves_no_config_that_blocks_a_rerun(tmp_path, monkeypatch, capsys, tiny_data):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(wandb.errors.CommError("bad key")))
    out = tmp_path / "run"
    argv = ["pretrain", "--data.path", str(tiny_data), *TINY, "--train.max_steps", "1", "--train.eval_batches", "1",
            "--log.no_tensorboard", "--log.no_plots", "--log.no_progress", "--out", str(out)]
    rc, err = one_line(capsys, [*argv, "--log.wandb"])
    assert rc == 2 and "W&B could not start" in err[-1], err
    assert not (out / "config.toml").exists()
    assert cli(argv) == 0  # the fresh run is not blocked


def test_an_empty_prompt_does_not_print_bos():
    """The <|bos|> that an empty prompt starts from is not shown; what the model generates is, unchanged."""
    import torch

    from banyan.train.sample import generate_text

    class Tok:
        bos_id, eos_id = 1, 2

        def encode(self, text):
            return [3 + ord(c) % 20 for c in text]

        def decode(self, ids):
            return "".join("<|bos|>" if i == 1 else chr(97 + i % 26) for i in ids)

    class Model:  # appends a fixed continuation (one of them a generated <|bos|>, which must stay)
        config = type("C", (), {"max_seq_len": 16})

        def generate(self, x, max_new_tokens, **kw):
            return torch.cat([x, torch.tensor([[4, 1, 5]])], dim=1)

    run = dict(max_new_tokens=3, temperature=0.0, top_k=0, top_p=1.0, seed=0, device=torch.device("cpu"))
    assert generate_text(Model(), Tok(), "", **run) == "e<|bos|>f"
    assert generate_text(Model(), Tok(), "a", **run) == "ue<|bos|>f"  # a prompt is shown as before
