"""peft folders go through the same checks as adapter files (issue 14 A, rows 10 and 12): theta and the saved head
must be finite and of the map's length before the model is touched."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import gpart_edu as ge

from .conftest import state_hash
from .test_interop import lora_cfg, peft_folder, tiny_cls, unilora_cfg

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("cfg,which", [(lora_cfg, "lora_B"), (lora_cfg, "classifier"), (unilora_cfg, "theta_d")],
                         ids=["lora-theta", "lora-head", "unilora-theta"])
def test_non_finite_peft_tensors_are_refused_before_the_model_changes(cfg, which, tmp_path):
    _, folder = peft_folder(tmp_path, tiny_cls(), cfg())
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if which in k)
    tensors[key] = tensors[key].clone().view(-1).index_fill_(0, torch.tensor([0]), float("nan")).view_as(tensors[key])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    model = tiny_cls()
    before = state_hash(model)
    with pytest.raises(ge.AdapterFileError, match="non-finite|not a finite"):
        ge.load_peft(folder, model)
    assert state_hash(model) == before and ge.get_adapter(model) is None
