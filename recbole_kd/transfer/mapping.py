"""Parameter and token mapping from a source model to a target model."""
from __future__ import annotations

import torch

from recbole_kd.errors import TransferError  # noqa: F401  (also importable from here)

# parameters tied to one dataset's ids: never copied wholesale
ID_PARAM_PREFIXES = ("item_embedding", "user_embedding", "output_bias", "item_id_mask")


def shared_token_ids(source_dataset, target_dataset, field: str):
    """(target ids, source ids) of the raw tokens of ``field`` present in both datasets
    (padding excluded), as LongTensors in target-id order."""
    src_index = source_dataset.field2token_id.get(field) or {}
    tgt_tokens = target_dataset.field2id_token.get(field)
    if tgt_tokens is None:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    pad = "[PAD]"
    pairs = [(i, src_index[t]) for i, t in enumerate(tgt_tokens) if t != pad and t in src_index and src_index[t] > 0]
    if not pairs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    tgt, src = zip(*pairs)
    return torch.tensor(tgt, dtype=torch.long), torch.tensor(src, dtype=torch.long)


def encoder_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters/buffers not tied to one dataset's ids."""
    return [n for n in model.state_dict() if not n.startswith(ID_PARAM_PREFIXES)]


def transfer_encoder(target_model: torch.nn.Module, source_state: dict) -> list[str]:
    """Copy every parameter/buffer not tied to ids (transformer blocks, position embeddings, layer
    norms) from ``source_state``; return the names copied. Shapes must match."""
    target_state = target_model.state_dict()
    copied, mismatched = [], []
    for name, value in source_state.items():
        if name.startswith(ID_PARAM_PREFIXES) or name not in target_state:
            continue
        if target_state[name].shape != value.shape:
            mismatched.append(f"{name} {tuple(value.shape)} vs {tuple(target_state[name].shape)}")
            continue
        target_state[name] = value.clone()
        copied.append(name)
    if mismatched:
        raise TransferError(
            f"encoder transfer needs the same architecture in both phases; shapes differ: {', '.join(mismatched[:3])}"
        )
    if not copied:
        raise TransferError("encoder transfer found no shared encoder parameters (is the model sequential?)")
    target_model.load_state_dict(target_state)
    return copied


@torch.no_grad()
def transfer_shared_tokens(target_model, source_model, source_dataset, target_dataset) -> dict:
    """Copy the embedding row of every user / item whose raw token appears in both datasets;
    rows of tokens only in the target keep their fresh initialisation. Returns the overlap."""
    report = {}
    for kind, attr, field in (("users", "user_embedding", target_dataset.uid_field),
                              ("items", "item_embedding", target_dataset.iid_field)):
        tgt_emb, src_emb = getattr(target_model, attr, None), getattr(source_model, attr, None)
        n_target = len(target_dataset.field2id_token[field]) - 1
        if tgt_emb is None or src_emb is None:
            report[kind] = {"shared": 0, "target": n_target, "copied": False}
            continue
        tgt_ids, src_ids = shared_token_ids(source_dataset, target_dataset, field)
        if tgt_emb.weight.shape[1] != src_emb.weight.shape[1]:
            raise TransferError(f"shared-token transfer: {attr} has width {src_emb.weight.shape[1]} in the source and "
                                f"{tgt_emb.weight.shape[1]} in the target; use the same embedding size")
        if len(tgt_ids):
            tgt_emb.weight[tgt_ids] = src_emb.weight[src_ids].to(tgt_emb.weight.device)
        report[kind] = {"shared": int(len(tgt_ids)), "target": n_target, "copied": bool(len(tgt_ids))}
    return report
