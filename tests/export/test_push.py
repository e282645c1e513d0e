"""`banyan push`: export + Hub upload through an injected fake HfApi (no network), token hygiene, dry run, W&B."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from banyan.cli import main as cli

sys.path.insert(0, str(Path(__file__).parent))
from exportkit import make_tokenizer, save_single, tiny_model  # noqa: E402

pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

SECRET = "hf_secret-value-0123456789"


class FakeHfApi:
    """Records create_repo/upload_folder calls; copies the uploaded folder (the real one is a temp folder)."""

    calls: list = []
    fail_with: str | None = None

    def __init__(self, token=None, **kw):
        FakeHfApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        if FakeHfApi.fail_with:
            raise RuntimeError(FakeHfApi.fail_with)
        FakeHfApi.calls.append(("upload_folder", repo_id, kw))
        shutil.copytree(folder_path, FakeHfApi.copy_to)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


@pytest.fixture
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("push-src")
    tok = make_tokenizer("bpe", root / "tok")
    save_single(root / "run", tiny_model("llama", 300, tie=False, n_kv_head=2), tok)
    return root / "run"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    FakeHfApi.calls, FakeHfApi.fail_with, FakeHfApi.copy_to = [], None, tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-login" / "tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return FakeHfApi


def _files_with(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_push_uploads_the_export_and_the_token_goes_nowhere_else(run, fake_hub, monkeypatch, tmp_path, capsys):
    import tempfile

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rc = cli(["push", "--src", str(run), "--repo", "me/tiny", "--private", "--gguf", "q8_0"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert fake_hub.calls[0] == ("init", SECRET)  # handed to HfApi and nothing else
    assert fake_hub.calls[1] == ("create_repo", "me/tiny", {"private": True, "repo_type": "model", "exist_ok": True})
    assert fake_hub.calls[2][:2] == ("upload_folder", "me/tiny")
    sent = sorted(p.name for p in (tmp_path / "uploaded").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "generation_config.json", "model-q8_0.gguf"} <= set(sent)
    for name in sent:  # the listing printed is exactly what was sent, with sizes
        assert f"  {name}  {(tmp_path / 'uploaded' / name).stat().st_size:,} bytes" in out.out
    assert "https://huggingface.co/me/tiny/commit/abc" in out.out
    assert SECRET not in out.out + out.err
    assert not _files_with(tmp_path, SECRET.encode()) and not _files_with(run, SECRET.encode())
    assert list((tmp_path / "tmp").iterdir()) == []  # the staged folder is gone after the upload


def test_dry_run_writes_and_lists_without_token_or_network(run, fake_hub, tmp_path, capsys):
    rc = cli(["push", "--src", str(run), "--repo", "me/tiny", "--dry_run", "--out", str(tmp_path / "up")])
    out = capsys.readouterr().out
    assert rc == 0 and fake_hub.calls == []
    files = sorted(p for p in (tmp_path / "up").rglob("*") if p.is_file())
    assert len(files) >= 6 and f"would upload {len(files)} files" in out
    for p in files:
        assert f"  {p.relative_to(tmp_path / 'up').as_posix()}  {p.stat().st_size:,} bytes" in out


def test_no_token_is_one_clear_error_and_nothing_is_written_or_sent(run, fake_hub, tmp_path, capsys):
    rc = cli(["push", "--src", str(run), "--repo", "me/tiny", "--out", str(tmp_path / "up")])
    err = capsys.readouterr().err
    assert rc == 2 and "no Hugging Face token: set HF_TOKEN" in err and len(err.strip().splitlines()) == 1
    assert fake_hub.calls == [] and not (tmp_path / "up").exists()


def test_upload_errors_never_repeat_the_token(run, fake_hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    fake_hub.fail_with = f"401 Unauthorized: invalid token {SECRET} for me/tiny"
    rc = cli(["push", "--src", str(run), "--repo", "me/tiny"])
    out = capsys.readouterr()
    assert rc == 2 and "upload to me/tiny failed: 401 Unauthorized: invalid token ***" in out.err
    assert SECRET not in out.out + out.err


@pytest.mark.parametrize("repo", ["tiny", "me/", "a/b/c", "me/ti ny"])
def test_a_bad_repo_id_is_refused(run, fake_hub, repo, capsys):
    assert cli(["push", "--src", str(run), "--repo", repo, "--dry_run"]) == 2
    assert "expected a Hub repository id USER/NAME" in capsys.readouterr().err


def test_wandb_offline_logs_the_final_checkpoint_as_an_artifact(run, fake_hub, monkeypatch, tmp_path, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = cli(["push", "--src", str(run), "--repo", "me/tiny", "--log.wandb"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "logged W&B artifact me-tiny-step_000007" in out.out
    logs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logs and any(b"me-tiny-step_000007" in p.read_bytes() for p in logs)  # the artifact record
    assert not _files_with(run, SECRET.encode())
