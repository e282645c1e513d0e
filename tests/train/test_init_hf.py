"""`--init hf:DIR`: a run starts from a local Hugging Face Llama / GPT-2 folder (weights, tokenizer).

The folders are tiny transformers models written by save_pretrained (Llama with GQA and an untied
head; GPT-2 tied, with a vocabulary padded past the tokenizer's), each with a tokenizer.json. At
step 0 the banyan model must compute transformers' logits; the Llama folder's tokenizer lacks
banyan's reserved specials, so its embedding and head grow by their rows.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from banyan.errors import BanyanError, ConfigError
from banyan.train.pretrain import PretrainTask
from banyan.train.trainer import Trainer
from trainkit import tiny_run

transformers = pytest.importorskip("transformers")

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n") * 30


def byte_tokenizer(folder: Path) -> None:
    """A foreign byte-level tokenizer.json: 256 byte tokens, none of banyan's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from banyan.data.tokenizer import byte_level_alphabet

    vocab = {c: i for i, c in enumerate(byte_level_alphabet().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def _perturb(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms and biases too, so a mis-mapped tensor shows
    return model.eval()


def hf_llama_folder(folder: Path, **config):
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, rms_norm_eps=1e-5, **config)
    torch.manual_seed(0)
    model = _perturb(transformers.LlamaForCausalLM(cfg))
    model.save_pretrained(folder)
    byte_tokenizer(folder)
    return model


def hf_gpt2_folder(folder: Path):
    from banyan.data.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe([TEXT], 300)
    cfg = transformers.GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = _perturb(transformers.GPT2LMHeadModel(cfg))
    model.save_pretrained(folder, max_shard_size="20KB")  # sharded: model.safetensors.index.json
    tok.save(folder)
    return model


def prepare_with(folder: Path, tmp_path: Path) -> Path:
    """A tiny corpus tokenized with the HF folder's tokenizer."""
    from banyan.data.prepare import PrepareConfig, prepare

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"doc{i}.txt").write_text(TEXT[i * 40:] + f"\nDocument {i}.\n")
    out = tmp_path / "data"
    prepare(PrepareConfig(source=str(src), out=str(out), tokenizer=str(folder / "tokenizer.json"),
                          val_fraction=0.3, workers=1))
    return out


def step0_logits_match(hf_model, folder: Path, data: Path, out: Path, vocab: int):
    cfg = tiny_run(data, out, max_steps=2)
    cfg.model.n_layer, cfg.init = 1, f"hf:{folder}"  # the architecture is config.json's
    trainer = Trainer(cfg, PretrainTask(cfg))
    trainer.setup()
    try:
        raw = trainer.par.raw
        assert raw.config.n_layer == 2 and raw.config.vocab_size == vocab
        ids = torch.randint(0, hf_model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            got, want = raw(ids), hf_model(ids).logits
        n = hf_model.config.vocab_size
        assert (got[..., :n] - want).abs().max().item() <= 1e-5
        return raw
    finally:
        trainer.logger.close()


def test_llama_gqa_untied_with_a_foreign_tokenizer_grows_and_matches(tmp_path):
    hf = hf_llama_folder(tmp_path / "hf")
    data = prepare_with(tmp_path / "hf", tmp_path)
    raw = step0_logits_match(hf, tmp_path / "hf", data, tmp_path / "run", vocab=256 + 7)
    head, embed = raw.lm_head.weight, raw.model.embed_tokens.weight
    assert head is not embed  # untied stays untied
    assert torch.allclose(embed[256:], hf.model.embed_tokens.weight.mean(0).expand(7, -1))
    assert torch.allclose(head[256:], hf.lm_head.weight.mean(0).expand(7, -1))


def test_gpt2_tied_sharded_with_a_padded_vocab_matches(tmp_path):
    hf = hf_gpt2_folder(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    data = prepare_with(tmp_path / "hf", tmp_path)
    raw = step0_logits_match(hf, tmp_path / "hf", data, tmp_path / "run", vocab=320)
    assert raw.lm_head.weight is raw.transformer.wte.weight


def _cli(capsys, *args):
    from banyan.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def test_pretrain_cli_from_hf_runs_and_checkpoints_its_tokenizer(tmp_path, capsys):
    hf_llama_folder(tmp_path / "hf")
    data = prepare_with(tmp_path / "hf", tmp_path)
    # fp32 and AdamW: the preset's bf16 peak-FLOP/s probe and Muon would cost more than the run itself
    r = _cli(capsys, "pretrain", "--init", f"hf:{tmp_path / 'hf'}", "--data.path", str(data),
             "--out", str(tmp_path / "run"), "--train.max_steps", "2", "--train.seq_len", "16",
             "--train.micro_batch", "2", "--train.eval_batches", "1", "--train.sample_every", "0",
             "--train.dtype", "fp32", "--optim.name", "adamw", "--log.no_tensorboard", "--log.no_plots",
             "--log.no_progress")
    assert r.returncode == 0, r.stderr
    assert f"weights from {tmp_path / 'hf'}" in r.stdout
    ck = tmp_path / "run" / "checkpoints" / "step_000002"
    assert json.loads((ck / "trainer.json").read_text())["step"] == 2
    from banyan.data.tokenizer import load_tokenizer

    assert load_tokenizer(ck).vocab_size == 263


def test_not_an_hf_folder_and_unsupported_configs_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    r = _cli(capsys, "pretrain", "--init", f"hf:{tmp_path / 'empty'}", "--out", str(tmp_path / "r1"))
    assert r.returncode == 2 and "not a Hugging Face model folder (no config.json)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    hf_llama_folder(tmp_path / "bias", attention_bias=True)
    r = _cli(capsys, "pretrain", "--init", f"hf:{tmp_path / 'bias'}", "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "'attention_bias' = True is not supported" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r2" / "checkpoints").exists()


def test_refusals_name_their_field_before_any_data_is_read(tmp_path):
    base = tmp_path / "hf"
    hf_llama_folder(base)
    cfg_file = base / "config.json"
    good = json.loads(cfg_file.read_text())
    for change, field in [({"sliding_window": 128}, "sliding_window"),
                          ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_parameters.rope_type"),
                          ({"architectures": ["LlamaForTokenClassification"]}, "architectures"),
                          ({"model_type": "qwen2"}, "model_type")]:
        cfg_file.write_text(json.dumps({**good, **change}))
        cfg = tiny_run(tmp_path / "no-data", tmp_path / "run")
        cfg.init = f"hf:{base}"
        with pytest.raises(ConfigError, match=f"config.json: HF config field '{field}'"):
            Trainer(cfg, PretrainTask(cfg)).setup()
    # a bare HF folder (no hf: prefix) says how to name it
    cfg_file.write_text(json.dumps(good))
    cfg = tiny_run(tmp_path / "no-data", tmp_path / "run2")
    cfg.init = str(base)
    with pytest.raises(BanyanError, match="write --init hf:"):
        Trainer(cfg, PretrainTask(cfg)).setup()


def test_data_from_another_tokenizer_is_refused(tmp_path, tiny_data):
    hf_llama_folder(tmp_path / "hf")
    cfg = tiny_run(tiny_data, tmp_path / "run")  # char-tokenized corpus, not the folder's byte tokenizer
    cfg.init = f"hf:{tmp_path / 'hf'}"
    with pytest.raises(ConfigError, match="tokenized with another tokenizer than --init hf:"):
        Trainer(cfg, PretrainTask(cfg)).setup()


def test_sample_from_an_hf_folder_is_transformers_greedy_text(tmp_path, capsys):
    hf = hf_llama_folder(tmp_path / "hf")
    from banyan.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "hf" / "tokenizer.json")
    ids = torch.tensor([tok.encode("First Citizen:")])
    want = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    r = _cli(capsys, "sample", "--ckpt", f"hf:{tmp_path / 'hf'}", "--prompt", "First Citizen:",
             "--max_new_tokens", "12", "--temperature", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == tok.decode(want[0].tolist())
