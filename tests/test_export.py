"""kadyn-export --hf: the exported folder loads with transformers' Auto classes and computes what
kadyn computes (logits within 1e-5, the same greedy tokens), and its tokenizer encodes like
World.encode."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import SMALL_FLAGS

import kadyn
from kadyn.checkpoint import load_model
from kadyn.config import TrainConfig
from kadyn.export import main as export_main
from kadyn.train import build_world
from kadyn.train import main as train_main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["tied", "untied"])
def exported(request, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    flags = [*SMALL_FLAGS, "--n-layers", "2", "--steps", "6", "--eval-every", "6"]
    if request.param == "untied":
        flags.append("--no-tie-embeddings")
    assert train_main([*flags, "--out", str(run)]) == 0
    out = tmp_path_factory.mktemp("hf")
    assert export_main([str(run), "--hf", str(out)]) == 0
    model, ckpt = load_model(run)
    return model, build_world(TrainConfig(**ckpt["config"])), out


def test_logits_and_greedy_tokens_match(exported) -> None:
    model, world, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "ArceeForCausalLM"
    batch = next(iter(kadyn.BiographyStream(world, batch_size=4, seq_len=96, seed=5)))
    ids = kadyn.to_torch(batch)["input_ids"].long()
    with torch.no_grad():
        ours, theirs = model.logits(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    prompt = ids[:, :24]
    greedy = hf.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None)
    assert torch.equal(model.generate(prompt, 40, eos_id=None), greedy)
    # With their defaults both stop at <eos> and pad finished rows with <pad>.
    greedy = hf.generate(prompt, max_new_tokens=40, do_sample=False)
    assert torch.equal(model.generate(prompt, 40), greedy)


def test_tokenizer_encodes_like_the_world(exported) -> None:
    _, world, out = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = next(iter(kadyn.BiographyStream(world, batch_size=8, seq_len=96, seed=6)))
    for row in kadyn.to_torch(batch)["input_ids"].tolist():
        text = world.decode(row)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == world.encode(text)
    for text in ("born in 1990.", "1990 . .", "<bos> <eos>"):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == world.encode(text)
    config = json.loads((out / "config.json").read_text())
    assert (config["pad_token_id"], config["eos_token_id"]) == (world.pad_id, world.eos_id)


def test_export_of_a_missing_run_is_one_line(tmp_path, capsys) -> None:
    assert export_main([str(tmp_path / "nothing"), "--hf", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint" in err, err
