"""Builders of tiny random-init models, saved like the real checkpoints.

Each builder constructs a model from a config only (no weights downloaded),
``save_pretrained``s it together with a locally built processor (a small BPE
tokenizer trained on a few sentences, carrying the family's special tokens,
and the family's image processor with tiny pixel limits) into a folder, and
returns the folder. Tests then load that folder through the same
``load_encoder`` / ``from_pretrained`` path users take.

``build_lora_adapter`` wraps a saved tiny base in a PEFT LoRA (plus the
projection as ``modules_to_save``, as the vidore / nomic checkpoints do) and
saves only the adapter, whose ``adapter_config.json`` names the local base.

``build_remote_code_colembed`` writes a tiny ``trust_remote_code`` model with
the llama-nemoretriever-colembed API (``forward_queries``,
``forward_passages``, ``get_scores``), optionally importing ``flash_attn`` at
module top as the real v1 modeling file does.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "PostgreSQL is an open source relational database system.",
    "Late interaction retrieval scores every query token against every document token.",
    "Describe the image. Query: what is on this page? Mount Everest mitochondria.",
    "A table of numbers, a chart, and a page of text with figures 0 1 2 3 4 5 6 7 8 9.",
]


def _tokenizer(special: list[str], *, bos: str | None, eos: str | None, pad: str,
               unk: str | None = None, padding_side: str = "right", add_bos: bool = False):
    """A small byte-level BPE tokenizer with the given special tokens."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys([t for t in [pad, bos, eos, unk, *special] if t]))
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if add_bos and bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        additional_special_tokens=[t for t in special if t not in (bos, eos, pad, unk)],
        padding_side=padding_side,
    )
    return fast


# ---------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-VL (ColQwen2, ColQwen2.5, BiQwen2.5)

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_processor(processor_cls):
    from transformers.models.qwen2_vl import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = _tokenizer(QWEN_SPECIAL, bos=None, eos="<|im_end|>", pad="<|endoftext|>", padding_side="left")
    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    return processor_cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)


def _qwen_ids(tok) -> dict[str, int]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    return {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
    }


def _qwen_text_config(tok) -> dict:
    return {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": len(tok), "max_position_embeddings": 2048,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": None,
    }


def build_colqwen2_5(out: Path, *, single_vector: bool = False, seed: int = 0) -> Path:
    """Tiny ColQwen2.5 (or BiQwen2.5 with ``single_vector``) → ``out``."""
    from colpali_engine.models import (
        BiQwen2_5,
        BiQwen2_5_Processor,
        ColQwen2_5,
        ColQwen2_5_Processor,
    )
    from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig

    proc_cls, model_cls = ((BiQwen2_5_Processor, BiQwen2_5) if single_vector
                           else (ColQwen2_5_Processor, ColQwen2_5))
    processor = _qwen_processor(proc_cls)
    tok = processor.tokenizer
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tok),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "out_hidden_size": 64, "fullatt_block_indexes": [1], "window_size": 56},
        **_qwen_ids(tok),
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    return _save(model, processor, out)


def build_colqwen2(out: Path, *, seed: int = 0) -> Path:
    """Tiny ColQwen2 → ``out``."""
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers.models.qwen2_vl import Qwen2VLConfig

    processor = _qwen_processor(ColQwen2Processor)
    tok = processor.tokenizer
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tok),
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 2},
        **_qwen_ids(tok),
    )
    torch.manual_seed(seed)
    return _save(ColQwen2(config), processor, out)


# ---------------------------------------------------------------------------
# PaliGemma (ColPali)

def build_colpali(out: Path, *, seed: int = 0) -> Path:
    """Tiny ColPali (PaliGemma: SigLIP 28 px, 4 image tokens) → ``out``."""
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import PaliGemmaConfig, SiglipImageProcessor

    tok = _tokenizer(["<image>"], bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                     padding_side="right", add_bos=True)
    image_processor = SiglipImageProcessor(size={"height": 28, "width": 28}, image_seq_length=4,
                                           do_normalize=True)
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tok, image_seq_length=4)
    image_id = tok.convert_tokens_to_ids("<image>")
    config = PaliGemmaConfig(
        text_config={"model_type": "gemma", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": len(tok),
                         "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                         "eos_token_id": tok.eos_token_id},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                           "projection_dim": 64},
        image_token_index=image_id, projection_dim=64, hidden_size=64, vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return _save(ColPali(config), processor, out)


# ---------------------------------------------------------------------------
# Idefics3 (ColIdefics3 / colSmol)

IDEFICS_SPECIAL = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
                   "<|im_start|>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def build_colidefics3(out: Path, *, seed: int = 0) -> Path:
    """Tiny ColIdefics3 (56 px tiles of 4 image tokens, images up to 112 px) → ``out``."""
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3Config, Idefics3ImageProcessor

    tok = _tokenizer(IDEFICS_SPECIAL, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>",
                     padding_side="left")
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                             do_image_splitting=True)
    processor = ColIdefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4)
    config = Idefics3Config(
        text_config={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tok),
                         "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                         "eos_token_id": tok.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "image_size": 56, "patch_size": 14},
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return _save(ColIdefics3(config), processor, out)


# ---------------------------------------------------------------------------
# Text encoders

def build_bert(out: Path, *, seed: int = 0) -> Path:
    """Tiny BERT text encoder with a WordPiece-free BPE tokenizer ([CLS]/[SEP] specials)."""
    from transformers import BertConfig, BertModel

    tok = _tokenizer(["[CLS]", "[SEP]", "[MASK]"], bos=None, eos=None, pad="[PAD]", unk="[UNK]")
    from tokenizers import processors

    backend = tok.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.convert_tokens_to_ids("[CLS]")),
                        ("[SEP]", tok.convert_tokens_to_ids("[SEP]"))],
    )
    tok.cls_token, tok.sep_token, tok.mask_token = "[CLS]", "[SEP]", "[MASK]"
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = BertModel(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.model_max_length = 128
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------
# LoRA adapter on a local base

def build_lora_adapter(base_dir: Path, out: Path, *, model_cls_name: str = "ColQwen2_5", seed: int = 1) -> Path:
    """A PEFT LoRA adapter over the tiny base in ``base_dir``, saved to ``out``.

    Like the public vidore / nomic checkpoints: LoRA on the language model's
    projections, ``custom_text_proj`` saved whole (``modules_to_save``), the
    processor files next to the adapter, ``base_model_name_or_path`` = base.
    The LoRA B matrices are set non-zero so the adapter changes the output.
    """
    import colpali_engine.models as cm
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor  # noqa: F401  (processor copied below)

    model_cls = getattr(cm, model_cls_name)
    base = model_cls.from_pretrained(str(base_dir))
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights="gaussian",
        target_modules=r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)",
        base_model_name_or_path=str(base_dir),
    )
    peft_model = get_peft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    # the real adapters ship their processor files
    for f in base_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json") and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir), cfg["base_model_name_or_path"]
    return out


# ---------------------------------------------------------------------------
# Remote-code (trust_remote_code) ColEmbed stand-in

_REMOTE_MODELING = '''
"""Tiny stand-in with the llama-nemoretriever-colembed API (forward_queries,
forward_passages, get_scores); written by pgmaxsim's tests."""
{flash_import}
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class TinyColEmbedConfig(PretrainedConfig):
    model_type = "tiny_colembed"

    def __init__(self, dim=24, vocab=256, max_input_tiles=2, **kwargs):
        self.dim = dim
        self.vocab = vocab
        self.max_input_tiles = max_input_tiles
        super().__init__(**kwargs)


class TinyColEmbedModel(PreTrainedModel):
    config_class = TinyColEmbedConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab, config.dim)
        self.patch = nn.Linear(3 * 8 * 8, config.dim)
        self.max_input_tiles = config.max_input_tiles
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Embedding, nn.Linear)):
            module.weight.data.normal_(0.0, 1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()

    def _pad(self, seqs):
        n = max(s.shape[0] for s in seqs)
        out = torch.zeros(len(seqs), n, self.config.dim)
        for i, s in enumerate(seqs):
            out[i, : s.shape[0]] = s
        return out

    @torch.no_grad()
    def forward_queries(self, queries, batch_size=8):
        seqs = []
        for q in queries:
            ids = torch.tensor([b % self.config.vocab for b in ("query: " + q).encode()])
            seqs.append(F.normalize(self.embed(ids), dim=-1))
        return self._pad(seqs)

    @torch.no_grad()
    def forward_passages(self, images, batch_size=8):
        seqs = []
        for im in images:
            tiles = min(self.max_input_tiles, 1 + (im.width * im.height) // (32 * 32))
            small = im.convert("RGB").resize((8 * tiles, 8))
            x = torch.tensor(list(small.getdata()), dtype=torch.float32).view(8, 8 * tiles, 3) / 255.0
            x = x.view(8, tiles, 8, 3).permute(1, 3, 0, 2).reshape(tiles, -1)
            seqs.append(F.normalize(self.patch(x), dim=-1))
        return self._pad(seqs)

    def get_scores(self, q, p, batch_size=8):
        return torch.stack([torch.stack([(qi @ pj.T).max(-1).values.sum() for pj in p]) for qi in q])
'''


def build_remote_code_colembed(out: Path, *, needs_flash_attn: bool = False, dim: int = 24) -> Path:
    """A tiny ``trust_remote_code`` model folder with the ColEmbed API."""
    out.mkdir(parents=True, exist_ok=True)
    flash = "import flash_attn  # noqa: F401  (as the real v1 modeling file does)" if needs_flash_attn else ""
    (out / "modeling_tiny_colembed.py").write_text(textwrap.dedent(_REMOTE_MODELING).format(flash_import=flash))
    config = {
        "architectures": ["TinyColEmbedModel"],
        "model_type": "tiny_colembed",
        "auto_map": {
            "AutoConfig": "modeling_tiny_colembed.TinyColEmbedConfig",
            "AutoModel": "modeling_tiny_colembed.TinyColEmbedModel",
        },
        "dim": dim, "vocab": 256, "max_input_tiles": 2,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if not needs_flash_attn:
        import importlib.util
        import sys

        spec = importlib.util.spec_from_file_location("_tiny_colembed_build", out / "modeling_tiny_colembed.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_tiny_colembed_build"] = mod
        spec.loader.exec_module(mod)
        torch.manual_seed(0)
        model = mod.TinyColEmbedModel(mod.TinyColEmbedConfig(dim=dim, vocab=256, max_input_tiles=2))
        model.save_pretrained(out)
        config_saved = json.loads((out / "config.json").read_text())
        config_saved["auto_map"] = config["auto_map"]
        (out / "config.json").write_text(json.dumps(config_saved, indent=1))
        del sys.modules["_tiny_colembed_build"]
    return out


def _save(model, processor, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
