"""Math fine-tuning rows (MetaMathQA style) and GSM8K evaluation by greedy decoding.

    rows = prompt_rows(tok, questions, answers, max_length)    # loss on the answer tokens only
    gsm8k_accuracy(model, tok, [(question, "42"), ...])        # exact match of the final number

Prompt: "Question: {q}\nAnswer:" followed by the answer and EOS; labels are -100 on the prompt.
Taught in notebooks/06_full_scale.ipynb, section 3 (the 7B math recipe); runs on a GPU with the hub.
"""
from __future__ import annotations

import re

import torch
from torch.nn.utils.rnn import pad_sequence

PROMPT = "Question: {q}\nAnswer:"


def prompt_rows(tok, questions, answers, max_length: int) -> list[dict]:
    """Causal-LM rows "Question: q\nAnswer: a<eos>"; the loss is on the answer tokens only (labels -100
    on the prompt); sequences longer than ``max_length`` keep their end."""
    rows = []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for q, a in zip(questions, answers):
        p = tok(PROMPT.format(q=str(q).strip()), add_special_tokens=False)["input_ids"]
        r = tok(" " + str(a).strip(), add_special_tokens=False)["input_ids"] + eos
        ids, labels = (p + r)[-max_length:], ([-100] * len(p) + r)[-max_length:]
        rows.append({"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.long),
                     "labels": torch.tensor(labels)})
    return rows


class LMCollator:
    """Right-pad input_ids (pad id), attention_mask (0) and labels (-100) to the longest row of a batch."""

    def __init__(self, pad_id):
        self.pad_id = 0 if pad_id is None else int(pad_id)

    def __call__(self, rows):
        out = {}
        for key, value in (("input_ids", self.pad_id), ("attention_mask", 0), ("labels", -100)):
            out[key] = pad_sequence([r[key] for r in rows], batch_first=True, padding_value=value)
        return out


def answer_number(text) -> str | None:
    """The final number of a GSM8K-style answer ("... #### 1,234" -> "1234"; else the last number)."""
    text = str(text)
    tail = text.split("####")[-1] if "####" in text else text
    nums = re.findall(r"-?\d[\d,]*\.?\d*", tail)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


@torch.no_grad()
def gsm8k_accuracy(model, tok, qa, max_new_tokens: int = 256, batch_size: int = 8) -> dict:
    """Greedy-decode an answer for each (question, number) and compare its final number (exact match)."""
    model_was_training = model.training
    model.eval()
    side, tok.padding_side = tok.padding_side, "left"
    dev = next(model.parameters()).device
    correct = 0
    try:
        for a in range(0, len(qa), batch_size):
            chunk = qa[a: a + batch_size]
            enc = tok([PROMPT.format(q=str(q).strip()) for q, _ in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(dev)
            enc = {k: enc[k] for k in ("input_ids", "attention_mask")}      # not token_type_ids: causal LMs refuse it
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(answer_number(t.split("Question:")[0]) == y for t, (_, y) in zip(texts, chunk))
    finally:
        tok.padding_side = side
        model.train(model_was_training)
    return {"gsm8k_accuracy": correct / max(1, len(qa)), "gsm8k_n": len(qa)}
