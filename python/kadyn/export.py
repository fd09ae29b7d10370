"""`kadyn-export RUN --hf OUT`: a trained run as a Hugging Face model folder.

kadyn's model is an existing architecture in `transformers`: `ArceeForCausalLM` is a Llama-style
decoder (RMSNorm, rotary embeddings with rotate-half pairs, no biases) whose MLP is not gated
(`down(act(up(x)))`), and with `hidden_act="gelu"` (exact GELU) it computes what `kadyn.model.GPT`
computes. So the export only renames and splits tensors:
- `blocks.i.attn.qkv` (3·d rows: q, k, v) becomes `q_proj`, `k_proj`, `v_proj`;
- `attn.proj` becomes `o_proj`, `mlp.up`/`mlp.down` become `up_proj`/`down_proj`;
- `attn_norm`/`mlp_norm` become `input_layernorm`/`post_attention_layernorm`, `norm` stays;
- `embed` becomes `embed_tokens`, and the head is tied (`tie_word_embeddings`) or `lm_head`.
torch's `nn.RMSNorm` uses eps = float32 machine epsilon by default, which `rms_norm_eps` copies.

The tokenizer is a `tokenizers` WordLevel model over the world's vocabulary, whose pre-tokenizer
mirrors `World.encode`: split on whitespace, then split each word's leading and trailing
punctuation off one character at a time (inner punctuation, as in O'Brien-Smith, stays). Text
with a word outside the vocabulary, which `World.encode` refuses, maps to `<pad>` there.

Needs the `hf` extra (`pip install "kadyn[hf]"`): transformers, safetensors, tokenizers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from kadyn.checkpoint import CheckpointError, load_model
from kadyn.cli import add_version_flag
from kadyn.config import OneLineParser, TrainConfig
from kadyn.model import GPT

# World.encode's punctuation (kadyn-core's vocab.rs, PUNCTUATION).
PUNCTUATION = '.,;:!?()"'
SPECIALS = ("<pad>", "<bos>", "<eos>")


def hf_config(model: GPT, world: Any) -> dict[str, Any]:
    """The config.json of the ArceeForCausalLM that computes what `model` computes."""
    c = model.config
    return {
        "architectures": ["ArceeForCausalLM"],
        "model_type": "arcee",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_mlp,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_heads,
        "head_dim": c.head_dim,
        "hidden_act": "gelu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": torch.finfo(torch.float32).eps,
        "rope_theta": c.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "pad_token_id": world.pad_id,
        "bos_token_id": world.bos_id,
        "eos_token_id": world.eos_id,
        "torch_dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """kadyn's parameters under ArceeForCausalLM's names (contiguous copies, for safetensors)."""
    d = model.config.d_model
    src = model.state_dict()
    out = {
        "model.embed_tokens.weight": src["embed.weight"],
        "model.norm.weight": src["norm.weight"],
    }
    for i in range(model.config.n_layers):
        block, layer = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = src[block + "attn.qkv.weight"].split(d, dim=0)
        out |= {
            layer + "self_attn.q_proj.weight": q,
            layer + "self_attn.k_proj.weight": k,
            layer + "self_attn.v_proj.weight": v,
            layer + "self_attn.o_proj.weight": src[block + "attn.proj.weight"],
            layer + "mlp.up_proj.weight": src[block + "mlp.up.weight"],
            layer + "mlp.down_proj.weight": src[block + "mlp.down.weight"],
            layer + "input_layernorm.weight": src[block + "attn_norm.weight"],
            layer + "post_attention_layernorm.weight": src[block + "mlp_norm.weight"],
        }
    if not model.config.tie_embeddings:
        out["lm_head.weight"] = src["head.weight"]
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in out.items()}


def hf_tokenizer(world: Any) -> Any:
    """A `tokenizers.Tokenizer` that encodes text as `world.encode` does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(world.vocab())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    p = "[" + "".join("\\" + c for c in PUNCTUATION) + "]"
    # \G chains matches from a word's start (leading punctuation, one character each); the
    # lookahead takes every punctuation character of the word's tail.
    edges = Regex(rf"\G{p}|{p}(?={p}*$)")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(edges, behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # spaces, no space before .
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer


def export_hf(run: Path, out: Path) -> Path:
    """Write `out/` (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
    generation_config.json) for the model of a run directory or checkpoint file."""
    from safetensors.torch import save_file

    from kadyn.train import build_world

    model, ckpt = load_model(run)
    config = TrainConfig(**ckpt["config"])
    world = build_world(config)
    if world.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"{run}: the model's vocabulary ({model.config.vocab_size}) is not its world's "
            f"({world.vocab_size})"
        )
    out.mkdir(parents=True, exist_ok=True)
    weights = hf_state_dict(model)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model, world), indent=1) + "\n")
    hf_tokenizer(world).save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<pad>",
        "model_max_length": model.config.max_seq_len,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1) + "\n")
    generation = {
        "bos_token_id": world.bos_id,
        "eos_token_id": world.eos_id,
        "pad_token_id": world.pad_id,
        "do_sample": False,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=1) + "\n")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineParser(
        prog="kadyn-export",
        description="Export a kadyn-train run's model as a Hugging Face model folder.",
    )
    parser.add_argument("run", type=Path, help="run directory (its checkpoint.pt) or checkpoint")
    parser.add_argument("--hf", type=Path, required=True, metavar="OUT", help="output folder")
    add_version_flag(parser)
    args = parser.parse_args(argv)
    try:
        out = export_hf(args.run, args.hf)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"kadyn-export: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"kadyn-export: error: {e.name} is missing; pip install 'kadyn[hf]'", file=sys.stderr)
        return 2
    print(f"wrote {out}: load it with transformers.AutoModelForCausalLM.from_pretrained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
