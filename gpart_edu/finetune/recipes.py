"""The paper's fine-tuning recipes as named defaults, with their cost computed from the real architecture.

    r = recipes.get("roberta-base-sst2")          # GPart, the paper's hyperparameters
    r = recipes.get("roberta-base-sst2-lora")     # the matching LoRA (r=8) baseline
    recipes.cost(r)                               # D, d, head, all-reduce bytes, memory (meta device)

Families (values of arXiv 2605.14841; "paper" below):
    glue  RoBERTa-base/large, query+value, d = 23,040, theta lr 5e-3, a head lr per task, AdamW wd 0.1,
          batch 32, warm-up 6 %, linear decay, dropout 0.1, max length 512. Epochs (base): CoLA 80,
          SST-2 60, MRPC 30, QNLI 25, RTE 160, STS-B 80. Large: the paper's large-model epochs / head lrs.
    vit   ViT-B/L (ImageNet-21k), query+value, d = 72,000 / 144,000, theta lr 4e-3, head lr 3e-3,
          20 epochs, wd 0.01, warm-up 40 %, linear; batch 64 x 4 accumulation (B) / 32 x 4 (L).
    math  causal LM on MetaMathQA -> GSM8K, q,k,v,o, d = 131,072 (0.5B) / 524,288 (7B), lr 2e-4,
          cosine, 2 epochs, bf16, sequence 2048, warm-up 5 %, wd 0.01, batch 2 x 8 accumulation.
Baselines: "<name>-lora" (LoRA r=8, alpha=8) and "<name>-unilora" (Uni-LoRA r=4, the same d). GLUE-base
baselines carry the paper's own per-task baseline settings; for ViT, RoBERTa-large LoRA and math they reuse
the GPart recipe's optimisation settings (``notes`` says so: tune the lr before comparing).
Dropout: gpart_edu has no separate adapter-input dropout (GPart runs one matmul with W0 + Delta W), so
``dropout`` is applied as the model's own hidden/attention dropout (RoBERTa's default is 0.1 anyway).
``batch_size`` is the global batch; the engine derives gradient accumulation from the number of processes.
Taught in notebooks/06_full_scale.ipynb, sections 1 and 2 (the recipes, their cost).
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import asdict, dataclass

import torch

from ..core import registry
from ..core.targets import describe, resolve_targets
from ..errors import ConfigError

GLUE_TASKS = ("cola", "sst2", "mrpc", "qnli", "rte", "stsb")
VIT_TASKS = ("cifar10", "cifar100")


@dataclass
class Recipe:
    """One named run: model, task, method (+ its config), targets and the optimisation settings."""

    name: str
    family: str
    model: str
    task: str
    method: str
    method_config: dict
    targets: tuple
    lr: float                       # theta (or LoRA factors)
    head_lr: float | None           # task head (None: no head is trained, e.g. causal LM)
    weight_decay: float
    batch_size: int                 # global (effective) batch
    per_device_batch_size: int      # what fits one GPU; accumulation = batch / (per_device * processes)
    warmup: float                   # fraction of the optimisation steps
    schedule: str                   # linear | cosine
    epochs: float
    dropout: float | None           # model hidden/attention dropout (None: the model's default)
    bf16: bool
    max_length: int | None          # tokens (text / LM); None for images
    notes: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def d(self) -> int | None:
        return self.method_config.get("d")

    @property
    def r(self) -> int | None:
        return self.method_config.get("r")


# ------------------------------------------------------------------------------- paper values
GLUE_BASE = dict(model="FacebookAI/roberta-base", d=23_040, lr=5e-3, weight_decay=0.1, batch_size=32,
                 warmup=0.06, schedule="linear", dropout=0.1, max_length=512, targets=("query", "value"))
GLUE_EPOCHS = {"base": {"cola": 80, "sst2": 60, "mrpc": 30, "qnli": 25, "rte": 160, "stsb": 80},
               "large": {"cola": 60, "sst2": 30, "mrpc": 40, "qnli": 25, "rte": 120, "stsb": 80}}
GLUE_HEAD_LR = {"base": {"cola": 2e-3, "sst2": 5e-4, "mrpc": 1e-3, "qnli": 1e-3, "rte": 1e-2, "stsb": 2e-4},
                "large": {"cola": 2e-2, "sst2": 2e-4, "mrpc": 2e-3, "qnli": 5e-3, "rte": 5e-3, "stsb": 1e-4}}
# the paper's GLUE-base baselines: (epochs, batch, lr, head lr) per task
LORA_GLUE = {"cola": (80, 32, 4e-4, 1e-3), "sst2": (60, 16, 5e-4, 1e-3), "mrpc": (30, 16, 4e-4, 1e-3),
             "qnli": (25, 32, 4e-4, 1e-3), "rte": (80, 32, 4e-4, 1e-3), "stsb": (40, 16, 4e-4, 1e-3)}
UNILORA_GLUE = {"base": {"cola": (80, 5e-3), "sst2": (60, 1e-4), "mrpc": (30, 2e-2), "qnli": (25, 2e-4),
                         "rte": (80, 5e-4), "stsb": (40, 2e-4)},
                "large": {"cola": (40, 2e-2), "sst2": (20, 2e-4), "mrpc": (40, 2e-3), "qnli": (20, 5e-3),
                          "rte": (40, 5e-3), "stsb": (40, 1e-4)}}
VIT = {"base": dict(model="google/vit-base-patch16-224-in21k", d=72_000, per_device=64),
       "large": dict(model="google/vit-large-patch16-224-in21k", d=144_000, per_device=32)}
VIT_COMMON = dict(lr=4e-3, head_lr=3e-3, epochs=20, weight_decay=0.01, warmup=0.4, schedule="linear",
                  accumulation=4, targets=("query", "value"))
MATH = {"0.5b": dict(model="Qwen/Qwen2.5-0.5B", d=131_072,
                     notes="the 0.5B model id is our choice of a 0.5B causal LM; pass --model to change it"),
        "7b": dict(model="mistralai/Mistral-7B-v0.1", d=524_288, notes="")}
MATH_COMMON = dict(lr=2e-4, schedule="cosine", epochs=2, bf16=True, max_length=2048, warmup=0.05,
                   weight_decay=0.01, per_device=2, accumulation=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
LORA_R, LORA_ALPHA, UNILORA_R = 8, 8.0, 4
SAME_SETTINGS = "optimisation settings copied from the GPart recipe; tune the lr for this method"


def _glue(size: str, task: str) -> list[Recipe]:
    model = f"FacebookAI/roberta-{size}"
    base = dict(family="glue", model=model, task=task, targets=GLUE_BASE["targets"],
                weight_decay=GLUE_BASE["weight_decay"], warmup=GLUE_BASE["warmup"], schedule="linear",
                dropout=GLUE_BASE["dropout"], bf16=True, max_length=GLUE_BASE["max_length"])
    name = f"roberta-{size}-{task}"
    d = GLUE_BASE["d"]
    out = [Recipe(name=name, method="gpart", method_config={"d": d}, lr=GLUE_BASE["lr"],
                  head_lr=GLUE_HEAD_LR[size][task], batch_size=32, per_device_batch_size=32,
                  epochs=GLUE_EPOCHS[size][task], **base)]
    ep, bs, lr, hlr = LORA_GLUE[task]
    out.append(Recipe(name=name + "-lora", method="lora", method_config={"r": LORA_R, "alpha": LORA_ALPHA},
                      lr=lr, head_lr=hlr, batch_size=bs, per_device_batch_size=bs, epochs=ep,
                      notes="" if size == "base" else "the paper's RoBERTa-base LoRA settings", **base))
    ep, hlr = UNILORA_GLUE[size][task]
    out.append(Recipe(name=name + "-unilora", method="unilora", method_config={"d": d, "r": UNILORA_R},
                      lr=5e-3, head_lr=hlr, batch_size=32, per_device_batch_size=32, epochs=ep, **base))
    return out


def _vit(size: str, task: str) -> list[Recipe]:
    v, c = VIT[size], VIT_COMMON
    base = dict(family="vit", model=v["model"], task=task, targets=c["targets"], lr=c["lr"],
                head_lr=c["head_lr"], weight_decay=c["weight_decay"], warmup=c["warmup"],
                schedule=c["schedule"], epochs=c["epochs"], dropout=None, bf16=True, max_length=None,
                batch_size=v["per_device"] * c["accumulation"], per_device_batch_size=v["per_device"])
    name = f"vit-{size}-{task}"
    return [Recipe(name=name, method="gpart", method_config={"d": v["d"]}, **base),
            Recipe(name=name + "-lora", method="lora", method_config={"r": LORA_R, "alpha": LORA_ALPHA},
                   notes=SAME_SETTINGS, **base),
            Recipe(name=name + "-unilora", method="unilora", method_config={"d": v["d"], "r": UNILORA_R},
                   notes=SAME_SETTINGS, **base)]


def _math(size: str) -> list[Recipe]:
    m, c = MATH[size], MATH_COMMON
    base = dict(family="math", model=m["model"], task="metamath", targets=c["targets"], lr=c["lr"],
                head_lr=None, weight_decay=c["weight_decay"], warmup=c["warmup"], schedule=c["schedule"],
                epochs=c["epochs"], dropout=None, bf16=c["bf16"], max_length=c["max_length"],
                batch_size=c["per_device"] * c["accumulation"], per_device_batch_size=c["per_device"])
    name = f"math-{size}"
    return [Recipe(name=name, method="gpart", method_config={"d": m["d"]}, notes=m["notes"], **base),
            Recipe(name=name + "-lora", method="lora", method_config={"r": LORA_R, "alpha": LORA_ALPHA},
                   notes=SAME_SETTINGS, **base),
            Recipe(name=name + "-unilora", method="unilora", method_config={"d": m["d"], "r": UNILORA_R},
                   notes=SAME_SETTINGS, **base)]


def _teaching() -> list[Recipe]:
    """Our CPU recipe (not the paper's): MiniLM + election tweets, measured in notebook 00."""
    return [Recipe(name="minilm-tweets", family="cpu", model="minilm", task="tweets", method="gpart",
                   method_config={"d": 23_040}, targets=("query", "value"), lr=5e-2, head_lr=1e-2,
                   weight_decay=0.0, batch_size=16, per_device_batch_size=16, warmup=0.1, schedule="linear",
                   epochs=0.1, dropout=None, bf16=False, max_length=64,
                   notes="gpart_edu's CPU teaching run (not a paper value): ~0.09 epoch = 30 steps")]


def _build() -> dict[str, Recipe]:
    out = []
    for size in ("base", "large"):
        for task in GLUE_TASKS:
            out += _glue(size, task)
        for task in VIT_TASKS:
            out += _vit(size, task)
    for size in MATH:
        out += _math(size)
    out += _teaching()
    return {r.name: r for r in out}


RECIPES: dict[str, Recipe] = _build()


def names(family: str | None = None) -> list[str]:
    """Recipe names (optionally one family: glue, vit, math, cpu)."""
    return [n for n, r in RECIPES.items() if family is None or r.family == family]


def get(name: str) -> Recipe:
    """A copy of the named recipe (edit it freely); unknown names raise with the close matches.

    Taught in notebooks/06_full_scale.ipynb, section "1 · The recipes".
    """
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=5)
        raise ConfigError(f"unknown recipe {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                          + " (list them with `gpart-edu recipes`)")
    return copy.deepcopy(RECIPES[name])


# ---------------------------------------------------------------------------------------- cost
# Architectures of the recipe models (transformers config class + fields), so the cost is computed from
# the real module tree on the meta device: exact counts, nothing downloaded, no memory allocated.
ARCHS = {
    "FacebookAI/roberta-base": ("roberta", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                                num_attention_heads=12, intermediate_size=3072,
                                                max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "FacebookAI/roberta-large": ("roberta", dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                                                 num_attention_heads=16, intermediate_size=4096,
                                                 max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "google/vit-base-patch16-224-in21k": ("vit", dict(hidden_size=768, num_hidden_layers=12,
                                                      num_attention_heads=12, intermediate_size=3072)),
    "google/vit-large-patch16-224-in21k": ("vit", dict(hidden_size=1024, num_hidden_layers=24,
                                                       num_attention_heads=16, intermediate_size=4096)),
    "Qwen/Qwen2.5-0.5B": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                        tie_word_embeddings=True)),
    "mistralai/Mistral-7B-v0.1": ("mistral", dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                                  num_hidden_layers=32, num_attention_heads=32,
                                                  num_key_value_heads=8, tie_word_embeddings=False)),
}
NUM_LABELS = {"cola": 2, "sst2": 2, "mrpc": 2, "qnli": 2, "rte": 2, "stsb": 1, "cifar10": 10, "cifar100": 100}


def meta_model(recipe: Recipe, config=None):
    """The recipe's model built on the meta device (shapes only) from ``ARCHS`` or a given HF config."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )
    if config is None:
        if recipe.model not in ARCHS:
            raise ConfigError(f"no built-in architecture for {recipe.model!r}; "
                              f"pass config=AutoConfig.from_pretrained(...)")
        kind, kw = ARCHS[recipe.model]
        config = AutoConfig.for_model(kind, **kw)
    auto = {"glue": AutoModelForSequenceClassification, "vit": AutoModelForImageClassification,
            "math": AutoModelForCausalLM}.get(recipe.family, AutoModelForSequenceClassification)
    if recipe.family != "math":
        config.num_labels = NUM_LABELS.get(recipe.task, 2)
    with torch.device("meta"):
        return auto.from_config(config)


def cost(recipe: Recipe, world_size: int = 1, config=None) -> dict:
    """Parameters, all-reduce bytes per optimizer step and memory of a recipe (from the meta-device model).

    allreduce_bytes: the gradients data-parallel training sums over processes each optimizer step, i.e.
    every trainable tensor (theta + head) in fp32 (DDP reduces in the parameter dtype; bf16 autocast keeps
    fp32 parameters). A ring all-reduce moves 2 (N-1)/N times that per process. Memory: fp32 weights +
    fp32 gradients and two AdamW moments of the trainable tensors (activations not included: they depend
    on batch and sequence length), and GPart's transient weight gradient of its largest target layer.
    Taught in notebooks/06_full_scale.ipynb, section "2 · What a recipe costs".
    """
    model = meta_model(recipe, config)
    n_model = sum(p.numel() for p in model.parameters())
    targets = [describe(n, m) for n, m in resolve_targets(model, recipe.targets)]
    D = sum(t.numel for t in targets)
    n_theta = registry.num_params(recipe.method, targets, **recipe.method_config)
    head = sum(p.numel() for n, p in model.named_parameters()
               if n.split(".")[0] in ("classifier", "score")) if recipe.head_lr is not None else 0
    trainable = n_theta + head
    payload = 4 * trainable
    return {
        "recipe": recipe.name, "model": recipe.model, "method": recipe.method, "model_params": n_model,
        "adapted_layers": len(targets), "D": D, "theta": n_theta, "head": head, "trainable": trainable,
        "allreduce_bytes": payload, "full_ft_allreduce_bytes": 4 * n_model,
        "ring_bytes_per_process": 2 * (world_size - 1) / world_size * payload if world_size > 1 else 0.0,
        "adapter_file_bytes": 4 * n_theta, "weights_fp32_bytes": 4 * n_model,
        "train_state_bytes": 4 * 3 * trainable,          # fp32 grad + 2 AdamW moments
        "gpart_transient_grad_bytes": 4 * max(t.numel for t in targets) if recipe.method == "gpart" else 0,
    }


# training-set sizes (examples) of the recipe tasks; the CIFAR recipes hold out 10 % of the 50,000 for validation
TRAIN_EXAMPLES = {"cola": 8_551, "sst2": 67_349, "mrpc": 3_668, "qnli": 104_743, "rte": 2_490, "stsb": 5_749,
                  "cifar10": 45_000, "cifar100": 45_000, "metamath": 395_000, "tweets": 5_444}
# tokens per example: ViT-B/16 at 224 px has 197 (196 patches + CLS); for text these are ASSUMED mean padded
# lengths (rough guesses for dynamic padding, not measurements): replace them with your own measurement
TOKENS_PER_EXAMPLE = {"cola": 24, "sst2": 40, "mrpc": 80, "qnli": 96, "rte": 128, "stsb": 64, "cifar10": 197,
                      "cifar100": 197, "metamath": 320, "tweets": 40}


def estimate_gpu_hours(recipe: Recipe, n_train: int | None = None, tokens_per_example: float | None = None,
                       peak_tflops: float = 989.0, mfu: float = 0.3, config=None) -> float:
    """A rough single-GPU training time from FLOPs -- an estimate, not a measurement.

    FLOPs per token ~ 4 N + 2 D (forward 2N, input gradients 2N, weight gradients of the adapted layers 2D;
    GPart needs the full weight gradient of its targets), times tokens = examples x tokens x epochs, divided
    by peak x utilisation (default: 989 TFLOP/s dense bf16, an H100/H200, at 30 %).
    Taught in notebooks/06_full_scale.ipynb, section "Expected GPU time — an estimate, not a measurement".
    """
    n_train = TRAIN_EXAMPLES[recipe.task] if n_train is None else n_train
    tokens = TOKENS_PER_EXAMPLE[recipe.task] if tokens_per_example is None else tokens_per_example
    c = cost(recipe, config=config)
    flops = (4 * c["model_params"] + 2 * c["D"]) * n_train * tokens * recipe.epochs
    return flops / (peak_tflops * 1e12 * mfu) / 3600.0


def table(family: str | None = None, methods=("gpart",)) -> list[dict]:
    """Rows for the README / notebook recipe table."""
    rows = []
    for r in RECIPES.values():
        if (family is None or r.family == family) and r.method in methods:
            rows.append({"recipe": r.name, "model": r.model, "task": r.task, "method": r.method,
                         **r.method_config, "targets": ",".join(r.targets), "lr": r.lr, "head_lr": r.head_lr,
                         "epochs": r.epochs, "batch": r.batch_size, "wd": r.weight_decay, "warmup": r.warmup,
                         "schedule": r.schedule, "bf16": r.bf16, "max_length": r.max_length})
    return rows


__all__ = ["Recipe", "RECIPES", "get", "names", "cost", "estimate_gpu_hours", "table", "meta_model",
           "GLUE_TASKS", "VIT_TASKS"]
