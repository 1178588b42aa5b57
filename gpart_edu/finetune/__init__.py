"""The fine-tuning wing: from a few CPU steps to torchrun.

    optim       the one optimisation config (learning rates, warm-up and schedule, clipping) and AdamW groups
    train       a small readable training loop (``fit``) used by notebooks, tests and widgets (notebooks 00, 04, 05)
    compare     grids of (method, budget, seed) and their tables (notebooks 04, 05)
    engine      full-scale runs through transformers' Trainer, data parallel, checkpoints (notebook 06, CLI)
    hf_trainer  the Trainer subclass: optim's AdamW groups and schedule, theta-sized checkpoints, an all-reduce counter
    results     what a run leaves in its folder
    recipes     the paper's recipes with their cost from the real architecture
    tasks       offline and hub tasks; gsm8k: generation-based GSM8K accuracy

The fine-tuning wing uses the core and never the lab.
"""
