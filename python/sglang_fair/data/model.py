"""The embedded default model: a small random-weight Llama with a locally trained BPE tokenizer.

Deterministic from its seed, made without any download: the tokenizer is trained on the Python standard library's
own source files (always present), the weights are drawn from torch's generator seeded with `seed`.
Size (hidden 512, 8 layers, ~30M parameters) is chosen so that on a 2-core CPU a 2k-token prefill costs clearly
more than a decode step of a few dozen requests (figures in docs/results.md, "Embedded model").
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyLlamaSpec:
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    vocab_size: int = 4096
    max_position_embeddings: int = 8192
    tokenizer_corpus_files: int = 300
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    root = os.environ.get("SGLANG_FAIR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sglang-fair")
    return Path(root) / "models"


def _corpus_files(n: int) -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    if not files:
        raise RuntimeError(f"no Python sources under {stdlib} to train the tokenizer on")
    return files[:n]


def _train_tokenizer(spec: TinyLlamaSpec, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(_corpus_files(spec.tokenizer_corpus_files), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    fast.save_pretrained(out)
    return fast


def make_model(spec: TinyLlamaSpec = TinyLlamaSpec(), cache_dir: Path | None = None) -> Path:
    """Create (once) and return the model directory for `spec`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = (cache_dir or default_cache_dir()) / f"tiny-llama-h{spec.hidden_size}-l{spec.num_hidden_layers}-{spec.key()}"
    if (out / "sglang_fair_model.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    fast = _train_tokenizer(spec, tmp)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                      num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                      num_key_value_heads=spec.num_key_value_heads,
                      max_position_embeddings=spec.max_position_embeddings, bos_token_id=fast.bos_token_id,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    finally:
        torch.random.set_rng_state(gen_state)
    model.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    (tmp / "sglang_fair_model.json").write_text(json.dumps({"spec": asdict(spec), "parameters": n_params}, indent=1))
    if out.exists():  # another process finished first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    tmp.rename(out)
    return out


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("make-model", help="create the embedded random-weight Llama (no downloads); prints its directory last")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where models are kept (default ~/.cache/sglang-fair/models)")
    p.add_argument("--hidden-size", type=int, default=TinyLlamaSpec.hidden_size)
    p.add_argument("--layers", type=int, default=TinyLlamaSpec.num_hidden_layers)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.hidden_size <= 0 or args.hidden_size % 64:
        raise SystemExit("--hidden-size must be a positive multiple of 64")
    if args.layers <= 0:
        raise SystemExit("--layers must be > 0")
    heads = args.hidden_size // 64
    spec = TinyLlamaSpec(hidden_size=args.hidden_size, intermediate_size=int(args.hidden_size * 2.6875),
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                         seed=args.seed)
    path = make_model(spec, args.cache_dir)
    info = json.loads((path / "sglang_fair_model.json").read_text())
    print(f"model: {info['parameters'] / 1e6:.1f}M parameters, hidden {spec.hidden_size}, {spec.num_hidden_layers} layers")
    print(path)
    return 0
