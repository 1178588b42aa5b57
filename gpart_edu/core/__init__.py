"""The core: theta -> Delta W, and putting it into a model (torch only).

    projections  P in R^{D x d}: the partition (balanced / multinomial / hashed), P^T P = I exactly
    methods      GPart, Uni-LoRA and LoRA as pure maps theta -> {weight name: Delta W}
    registry     names, aliases, budgets (d or r) and defaults of the methods; build(name, targets, budget)
    fused        GPart's training forward: one matmul with W0 + Delta W (a custom autograd function)
    reference    the three maps written densely in a few lines: the float64 oracle of the tests
    targets      which layers to adapt (name suffixes, regexes, "all-linear", architecture aliases)
    adapter      attach / merge / unmerge / detach / save / load_adapter
    storage      the adapter file (safetensors: theta + config + target fingerprint)

Nothing here imports the lab, the fine-tuning wing, plots, widgets or the CLI.
Taught in notebooks 00 (attach, save, load), 01 (the partition) and 02 (the three maps).
"""
