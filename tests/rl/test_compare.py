"""rl compare and bench rl: grid validation, aggregation, and a tiny end-to-end grid."""

import json

import pytest

from banyan.errors import BanyanError
from banyan.rl import bench
from banyan.rl.compare import CompareConfig, aggregate, grid, main, markdown_table


def _summary(env, policy, seed, final, solve, sps):
    return {"env": env, "policy": policy, "seed": seed, "final_return_mean": final, "best_return_mean": final,
            "steps_to_solve": solve, "wall_seconds": 10.0, "samples_per_second": sps, "policy_params": 100,
            "reward_threshold": 475.0, "env_steps": 1000}


def test_aggregate_over_seeds():
    runs = [_summary("A", "mlp", 1, 500.0, 4000, 100.0), _summary("A", "mlp", 2, 300.0, None, 300.0),
            _summary("A", "transformer", 1, 100.0, None, 50.0)]
    rows = aggregate(runs)
    mlp = next(r for r in rows if r["policy"] == "mlp")
    assert mlp["final_return_mean"] == 400.0 and mlp["final_return_std"] == 100.0
    assert mlp["solved"] == 1 and mlp["steps_to_solve_median"] == 4000 and mlp["samples_per_second"] == 200.0
    table = markdown_table(rows)
    assert "| A | mlp | 100 | 400.0 ± 100.0 | 400.0 | 1/2 | 4000 |" in table
    assert "| A | transformer | 100 | 100.0 ± 0.0 | 100.0 | 0/1 | — |" in table


def test_grid_rejects_bad_input():
    with pytest.raises(BanyanError, match="mlp,transformer"):
        grid(CompareConfig(policies="mlp,lstm"))
    with pytest.raises(BanyanError, match="did you mean CartPole-v1"):
        grid(CompareConfig(envs="CartPole-v1,CartPol-v1"))
    with pytest.raises(BanyanError, match="dqn needs a discrete"):
        grid(CompareConfig(envs="Pendulum-v1", algo="dqn"))
    cells = grid(CompareConfig(seeds=2))
    assert len(cells) == 2 * 2 * 2 and {c["seed"] for c in cells} == {1, 2}


def test_tiny_grid_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    assert main(["--envs", "banyan/CartPoleNoVel-v0", "--seeds", "1", "--steps", "256", "--envs_per_run", "4",
                 "--eval_every", "0", "--eval_episodes", "2", "--jobs", "1", "--ppo.epochs", "1",
                 "--net.history", "2", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in data["rows"]} == {"mlp", "transformer"}
    assert "| banyan/CartPoleNoVel-v0 | transformer |" in (out / "results.md").read_text()
    assert (out / "banyan_CartPoleNoVel-v0.png").stat().st_size > 1000


def test_bench_reports_pass_fail(tmp_path, capsys):
    # One tiny seed cannot solve CartPole: the bench must say FAIL and exit 1 when 1 solve is needed.
    rc = bench.main(["--seeds", "1", "--steps", "256", "--need", "1", "--envs", "4", "--eval_every", "0",
                     "--ppo.epochs", "1", "--out", str(tmp_path / "b")])
    assert rc == 1
    assert "FAIL (need 1)" in capsys.readouterr().out
    result = json.loads((tmp_path / "b" / "bench_rl.json").read_text())
    assert result["solved"] == 0 and result["passed"] is False and len(result["runs"]) == 1
    run = result["runs"][0]
    assert run["env_steps"] == 256 and run["steps_to_solve"] is None
    # samples/s with the evaluation episodes counted can only be lower than training-only samples/s
    assert 0 < run["samples_per_second_with_eval"] <= run["samples_per_second"]
    assert result["samples_per_second_with_eval_mean"] == run["samples_per_second_with_eval"]
