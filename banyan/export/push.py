"""`banyan push`: export a run and upload it to the Hugging Face Hub (and log it to W&B).

    banyan push --src runs/shakespeare --repo USER/NAME [--private] [--dry_run] [--gguf q8_0|f16]

The run is exported (banyan.export.hf, plus a GGUF file with --gguf) into --out or a temporary
folder, then `HfApi.create_repo` (exist_ok) and `HfApi.upload_folder` send that folder as one
commit. The token comes from HF_TOKEN or the local login (`huggingface_hub.get_token`); it is handed
to HfApi only, never printed, logged or written (an upload error is repeated with it blanked out).
`--dry_run` needs no token and no network: it writes the folder and lists every file that would be
uploaded with its size (and logs nothing to W&B). With `--log.wandb` the final checkpoint folder is also logged as a W&B
`model` artifact (offline, into the run folder, unless WANDB_API_KEY is set).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from banyan.config import LogConfig, parse_cli
from banyan.errors import BanyanError, ConfigError
from banyan.export.hf import ExportHFConfig, export_hf

GGUF_NAME = "model-{dtype}.gguf"


@dataclass
class PushConfig(ExportHFConfig):
    """Export a banyan run or checkpoint and upload it to the Hugging Face Hub."""

    out: str = ""
    """Folder to write the upload into (kept); empty: a temp folder, removed after the upload (kept by --dry_run)."""
    repo: str = ""
    """Hub repository id, USER/NAME (created if missing)."""
    private: bool = False
    """Create the repository as private (an existing repository keeps its visibility)."""
    dry_run: bool = False
    """Write the folder and list what would be uploaded; no token, no network."""
    gguf: Literal["", "q8_0", "f16"] = ""
    """Also export a GGUF file (model-<dtype>.gguf) of this storage type into the folder (Llama only)."""
    commit_message: str = "Upload banyan model"
    """Message of the Hub commit."""
    log: LogConfig = field(default_factory=lambda: LogConfig(tensorboard=False, plots=False))
    """--log.wandb logs the final checkpoint as a W&B artifact."""


def check_repo(repo: str) -> str:
    """`USER/NAME`, refused with one line otherwise."""
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise ConfigError(f"--repo {repo!r}: expected a Hub repository id USER/NAME")
    return repo


def hub_token() -> str:
    """The Hub token from HF_TOKEN or the local login; a clear error without one (nothing uploaded)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                          "(or pass --dry_run to only write and list the folder); nothing was uploaded")
    return token


def build_folder(cfg: PushConfig, out: Path) -> Path:
    """The HF folder (and GGUF file) for `cfg.src` at `out`."""
    from dataclasses import fields

    hf_cfg = ExportHFConfig(**{f.name: getattr(cfg, f.name) for f in fields(ExportHFConfig)})
    hf_cfg.out = str(out)
    export_hf(hf_cfg)
    if cfg.gguf:
        from banyan.export.gguf import ExportGGUFConfig, export_gguf

        export_gguf(ExportGGUFConfig(src=cfg.src, out=str(out / GGUF_NAME.format(dtype=cfg.gguf)), dtype=cfg.gguf))
    return out


def listing(folder: Path) -> list[tuple[str, int]]:
    """(path relative to `folder`, bytes) of every file that upload_folder sends, sorted."""
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def upload(folder: Path, cfg: PushConfig, token: str) -> str:
    """create_repo + upload_folder; returns the commit URL. Errors are re-raised without the token."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(cfg.repo, private=cfg.private, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=cfg.repo, folder_path=str(folder), repo_type="model",
                                 commit_message=cfg.commit_message)
    except Exception as e:  # noqa: BLE001 - network/HTTP errors of any kind: one line, token blanked out
        text = (str(e).strip().splitlines() or [type(e).__name__])[0].replace(token, "***")
        raise BanyanError(f"upload to {cfg.repo} failed: {text}") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{cfg.repo}")


def log_artifact(cfg: PushConfig) -> str:
    """Log the final checkpoint folder as a W&B `model` artifact; returns the artifact name."""
    from banyan.logger import init_wandb
    from banyan.train.checkpoint import CKPT_DIR, resolve_checkpoint

    import wandb

    ck = resolve_checkpoint(cfg.src)
    run_dir = ck.parent.parent if ck.parent.name == CKPT_DIR else ck.parent
    name = f"{cfg.repo.replace('/', '-')}-{ck.name}"
    run = init_wandb(run_dir, cfg.log, {"repo": cfg.repo, "checkpoint": str(ck)}, resume=False)
    try:
        artifact = wandb.Artifact(name, type="model", metadata={"hub_repo": cfg.repo, "checkpoint": ck.name})
        artifact.add_dir(str(ck))
        run.log_artifact(artifact)
    finally:
        run.finish()
    return name


def push(cfg: PushConfig) -> list[tuple[str, int]]:
    """Export `cfg.src` and upload it (or only list it, --dry_run); returns the uploaded (path, bytes)."""
    if not cfg.src:
        raise ConfigError("--src is required (a run folder or a checkpoint folder)")
    check_repo(cfg.repo)
    token = None if cfg.dry_run else hub_token()  # before any work: no token, nothing written or sent
    tmp = None if cfg.out else Path(tempfile.mkdtemp(prefix="banyan-push-"))
    folder = Path(cfg.out) if cfg.out else tmp / "model"
    try:
        build_folder(cfg, folder)
        files = listing(folder)
        verb = "would upload" if cfg.dry_run else "uploading"
        print(f"{verb} {len(files)} files ({sum(s for _, s in files):,} bytes) from {folder} to {cfg.repo}:")
        for path, size in files:
            print(f"  {path}  {size:,} bytes")
        if token is not None:
            print(f"pushed: {upload(folder, cfg, token)}")
            if cfg.log.wandb:
                print(f"logged W&B artifact {log_artifact(cfg)}")
    finally:
        if tmp is not None and not cfg.dry_run:
            shutil.rmtree(tmp, ignore_errors=True)
    if cfg.dry_run and tmp is not None:
        print(f"(dry run: nothing uploaded; the folder is kept at {folder})")
    return files


def main(argv: list[str]) -> int:
    push(parse_cli(PushConfig, argv, prog="banyan push"))
    return 0
