"""The paper's 3D-grounding metric: AP at 3D IoU 0.15, confidence fixed at 1.0, category given in the prompt.

Protocol (Omni3D, as the paper and the Qwen3-VL report use it): for every (image, category) question the
model's answer is decoded into oriented boxes; every predicted box has confidence 1.0, so predictions keep
their order (questions in order, tuples in the order the model wrote them). Per category, predictions are
matched greedily to the unmatched ground-truth box of the same image with the highest IoU >= threshold
(COCO matching); precision is made monotone and averaged at 101 recall points (COCO interpolation); AP is
the mean over categories that have ground truth, in percent.

Decoding never raises: answers that are not 'no object' and yield no well-formed tuple, tuples that are
malformed, that lack the size tokens a box needs, that name another category, or answers cut off by the
token budget are counted in `DecodeStats`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import torch

from posevla.model.pose_sequence import parse_tuples_lenient
from posevla.model.pose_tokens import PoseTokenizer
from posevla.pretrain.boxes import Box3D, iou_matrix
from posevla.pretrain.targets import NO_OBJECT, PretrainSample

IOU_THRESHOLD = 0.15
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class DecodeStats:
    answers: int = 0
    no_object: int = 0
    tuples: int = 0
    malformed_tuples: int = 0
    unparsable_answers: int = 0
    missing_size: int = 0
    wrong_category: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def decode_answer(text: str, category: str, tok: PoseTokenizer, stats: DecodeStats) -> list[Box3D]:
    """Boxes of `category` in a model answer; every fault is counted in `stats`, nothing raises."""
    stats.answers += 1
    if not isinstance(text, str):
        stats.unparsable_answers += 1
        return []
    if text.strip().lower() == NO_OBJECT:
        stats.no_object += 1
        return []
    try:
        tuples, errors = parse_tuples_lenient(text, tok)
    except Exception:  # noqa: BLE001 - the parser is lenient already; anything else is still just a bad answer
        stats.unparsable_answers += 1
        return []
    stats.malformed_tuples += len(errors)
    if not tuples:
        stats.unparsable_answers += 1
        return []
    boxes = []
    for tp in tuples:
        if tp.size is None:
            stats.missing_size += 1
            continue
        if tp.category.strip().lower() != category.strip().lower():
            stats.wrong_category += 1
            continue
        try:
            boxes.append(Box3D(tp.T_cam_obj, tp.size))
        except ValueError:
            stats.malformed_tuples += 1
            continue
        stats.tuples += 1
    return boxes


def average_precision(records: list[tuple[str, str, list[Box3D], list[Box3D]]],
                      iou_threshold: float = IOU_THRESHOLD) -> dict:
    """records: (category, image key, predicted boxes in order, ground-truth boxes). Returns AP (percent) overall
    and per category, with the TP/FP/GT counts."""
    by_cat: dict[str, list[tuple[str, list[Box3D], list[Box3D]]]] = defaultdict(list)
    for cat, key, preds, gts in records:
        by_cat[cat].append((key, preds, gts))
    per_cat = {}
    for cat, items in sorted(by_cat.items()):
        n_gt = sum(len(g) for _, _, g in items)
        if n_gt == 0:
            continue
        tp_flags = []
        for _key, preds, gts in items:
            taken = np.zeros(len(gts), bool)
            ious = iou_matrix(preds, gts) if preds and gts else np.zeros((len(preds), len(gts)))
            for i in range(len(preds)):
                best, best_j = iou_threshold, -1
                for j in range(len(gts)):
                    if not taken[j] and ious[i, j] >= best:
                        best, best_j = ious[i, j], j
                if best_j >= 0:
                    taken[best_j] = True
                tp_flags.append(best_j >= 0)
        tp = np.cumsum(tp_flags, dtype=np.float64)
        fp = np.cumsum(~np.asarray(tp_flags, dtype=bool), dtype=np.float64)
        if tp.size:
            recall = tp / n_gt
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
            idx = np.searchsorted(recall, RECALL_POINTS, side="left")
            sampled = np.where(idx < recall.size, precision[np.minimum(idx, recall.size - 1)], 0.0)
            ap = float(sampled.mean())
        else:
            ap = 0.0
        per_cat[cat] = {"ap": 100.0 * ap, "gt": n_gt, "tp": int(tp[-1]) if tp.size else 0,
                        "fp": int(fp[-1]) if fp.size else 0}
    mean = float(np.mean([v["ap"] for v in per_cat.values()])) if per_cat else 0.0
    return {"ap": mean, "iou_threshold": iou_threshold, "per_category": per_cat}


@torch.no_grad()
def generate_answers(policy, samples: list[PretrainSample], batch_size: int = 16, max_new_tokens: int = 96,
                     modalities: str = "full") -> tuple[list[str], int]:
    """Greedy answers of the model to the samples' prompts. Returns the texts and how many hit the token budget."""
    model, tok = policy.model, policy.tokenizer
    was_training = model.training
    model.eval()
    texts, truncated = [], 0
    try:
        for i in range(0, len(samples), batch_size):
            chunk = [s.sample for s in samples[i:i + batch_size]]
            batch = policy.make_batch([type(c)(c.observation) for c in chunk])  # prompts only
            ids = model.generate(batch, max_new_tokens, tok.eos_token_id, modalities).tolist()
            for row in ids:
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id)]
                elif len(row) >= max_new_tokens:
                    truncated += 1
                texts.append(tok.decode(row, skip_special_tokens=False))
    finally:
        model.train(was_training)
    return texts, truncated


def evaluate_grounding(policy, samples: list[PretrainSample], batch_size: int = 16, max_new_tokens: int = 96,
                       modalities: str = "full", iou_threshold: float = IOU_THRESHOLD) -> dict:
    """AP15 of a policy on grounding samples, with decode statistics and a few example answers."""
    samples = [s for s in samples if s.category is not None]
    texts, truncated = generate_answers(policy, samples, batch_size, max_new_tokens, modalities)
    stats = DecodeStats(truncated=truncated)
    records = []
    for s, text in zip(samples, texts):
        category = s.category
        assert category is not None  # filtered above
        preds = decode_answer(text, category, policy.pose_tokenizer, stats)
        records.append((category, f"{s.source}:{s.image_id}", preds, s.gt_boxes))
    result = average_precision(records, iou_threshold)
    result.update({"questions": len(samples), "decode": stats.as_dict(), "examples": texts[:3],
                   "modalities": modalities})
    return result


def best_constant_answer(boxes_by_category: dict[str, list[Box3D]], iou_threshold: float = IOU_THRESHOLD
                         ) -> dict[str, Box3D]:
    """The image-blind baseline: per category, the one box (from the given, e.g. training, boxes) that overlaps
    the most of them at IoU >= threshold, i.e. the best answer a model could give without looking at the image."""
    out = {}
    for cat, boxes in boxes_by_category.items():
        if not boxes:
            continue
        hits = (iou_matrix(boxes, boxes) >= iou_threshold).sum(axis=1)
        out[cat] = boxes[int(np.argmax(hits))]
    return out


def constant_answer_ap(answer: dict[str, Box3D], samples: list[PretrainSample],
                       iou_threshold: float = IOU_THRESHOLD) -> dict:
    """AP of answering every question with the category's constant box (no box for unknown categories)."""
    records = [(s.category, f"{s.source}:{s.image_id}", [answer[s.category]] if s.category in answer else [],
                s.gt_boxes) for s in samples if s.category is not None]
    return average_precision(records, iou_threshold)
