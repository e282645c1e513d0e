"""`banyan plan --budget`: the Chinchilla law, budget parsing, the size sweep, the CLI's table/JSON/PNG."""

import json

import pytest

from banyan.cli import main as banyan
from banyan.errors import BanyanError
from banyan.plan import budget as B
from banyan.plan.planner import resolve_hardware

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chinchilla_approach_3_constants():
    # Chinchilla itself, 70B params on 1.4T tokens: 1.69 + 406.4/70e9^0.34 + 410.7/1.4e12^0.28
    assert B.chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.69 + 0.08357 + 0.16313, abs=2e-4)
    assert B.chinchilla_loss(1e9, 1e10) > B.chinchilla_loss(1e9, 1e11) > B.chinchilla_loss(2e9, 1e11) > 1.69
    assert B.chinchilla_loss(1e9, 0) == float("inf")


def test_parse_budget_units():
    assert B.parse_budget("14d", 4)[0] == 14 * 86400
    assert B.parse_budget("36h", 2)[0] == 36 * 3600
    sec, desc = B.parse_budget("5000gpuh", 4)
    assert sec == 5000 * 3600 / 4 and "5000 GPU-hours" in desc
    for bad in ("14", "two weeks", "0d", "-3h"):
        with pytest.raises(BanyanError, match="--budget"):
            B.parse_budget(bad, 4)


def test_sweep_tokens_scale_with_budget_and_recommendation_is_the_lowest_loss():
    hw = resolve_hardware("4x4090", "pcie4", False)
    names = ["llama-60m", "llama-500m", "llama-1b"]
    week, month = B.sweep(hw, 7 * 86400, names), B.sweep(hw, 30 * 86400, names)
    assert [r.name for r in week] == names and all(r.fits for r in week)
    for w, m in zip(week, month):
        assert m.tokens == pytest.approx(w.tokens * 30 / 7) and m.loss < w.loss
        assert w.tokens == pytest.approx(w.tokens_per_s * 7 * 86400)
        assert w.loss == pytest.approx(B.chinchilla_loss(w.params, w.tokens))
    assert week[0].tokens_per_s > week[1].tokens_per_s > week[2].tokens_per_s
    best = B.recommend(week)
    assert best.loss == min(r.loss for r in week)
    assert "llama-500m" in B.compare(week, "llama-500m", "llama-1b")


def test_a_size_that_does_not_fit_is_reported_not_recommended():
    hw = resolve_hardware("1x4090", "pcie4", True)
    res = B.sweep(hw, 86400, ["llama-60m", "llama-2b"], optims=("adamw",))
    big = next(r for r in res if r.name == "llama-2b")
    assert not big.fits and big.loss == float("inf")
    assert B.recommend(res).name == "llama-60m"
    assert B.compare(res, "llama-60m", "llama-2b").startswith("llama-2b does not fit")


def test_cli_budget_json_and_png(capsys, tmp_path):
    png = tmp_path / "loss.png"
    rc = banyan(["plan", "--gpus", "4x4090", "--interconnect", "pcie4", "--p2p", "off", "--budget", "14d",
                 "--sizes", "llama-125m,llama-500m,llama-1b", "--json", "--plot", str(png)])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["recommendation"] in ("llama-125m", "llama-500m", "llama-1b")
    assert len(d["sizes"]) == 3 and "not a promise" in d["caveat"] and d["law"]["alpha"] == 0.34
    assert d["500m_vs_1b"].startswith("llama-500m")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = banyan(["plan", "--gpus", "4x4090", "--budget", "5000gpuh", "--sizes", "llama-125m", "--plot", "none"])
    out = capsys.readouterr().out
    assert rc == 0 and "Lowest expected loss: llama-125m" in out and "Hoffmann" in out


def test_cli_budget_errors_name_the_flag(capsys):
    assert banyan(["plan", "--budget", "14d"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert banyan(["plan", "--gpus", "4x4090", "--budget", "14d", "--sizes", "llama-9t"]) == 2
    assert "llama-9t" in capsys.readouterr().err


def test_p2p_auto_is_off_for_4090s_over_pcie_only(capsys):
    common = ["--budget", "1d", "--sizes", "llama-60m", "--json", "--plot", "none"]
    banyan(["plan", "--gpus", "4x4090", "--interconnect", "pcie4", *common])
    assert "P2P off" in json.loads(capsys.readouterr().out)["link"]
    banyan(["plan", "--gpus", "4x4090", "--interconnect", "pcie4", "--p2p", "on", *common])
    assert "P2P off" not in json.loads(capsys.readouterr().out)["link"]
    banyan(["plan", "--gpus", "4xa100-80gb", "--interconnect", "pcie4", *common])
    assert "P2P off" not in json.loads(capsys.readouterr().out)["link"]
