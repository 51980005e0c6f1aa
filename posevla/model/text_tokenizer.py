"""Text tokenizers for Pose-VLA: an offline PaliGemma-like tokenizer for tiny models, and the vocabulary
extension of a real PaliGemma tokenizer with the pose tokens.

The offline tokenizer is byte-level (every UTF-8 byte is one token, so any instruction tokenizes) with
PaliGemma's special tokens `<pad> <eos> <bos> <unk>`, the image placeholder `<image>`, the 1024
`<locNNNN>` tokens and the pose tokens, each a single id. PaliGemma's prompt convention is kept:
`<image>` x num_image_tokens + `<bos>` + prompt + "\n", then the answer (suffix) + `<eos>`.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from posevla.model.pose_tokens import GROUPS, PoseTokenizer

SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>")
IMAGE_TOKEN = "<image>"
LOC_TOKENS = tuple(f"<loc{i:04d}>" for i in range(1024))


def build_offline_tokenizer(pose_tok: PoseTokenizer) -> PreTrainedTokenizerFast:
    """A small byte-level tokenizer with PaliGemma's special, image and loc tokens plus the pose tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.add_tokens([IMAGE_TOKEN, *LOC_TOKENS])
    extend_tokenizer(tok, pose_tok)
    return tok


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token (transformers types convert_tokens_to_ids as int | list[int])."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"tokenizer has no single id for {token!r}: {found!r}")
    return found


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, pose_tok: PoseTokenizer) -> int:
    """Add the pose tokens (idempotent). Returns how many were new. Resize the model's embeddings after."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in pose_tok.token_strings() if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing)
    return len(missing)


def pose_token_ids(tokenizer: PreTrainedTokenizerFast, pose_tok: PoseTokenizer) -> dict[str, np.ndarray]:
    """Token id of every bin, per group: {'rot': (N,), 'trans_xy': (N,), 'trans_z': (N,), 'size': (N,)}."""
    found = tokenizer.convert_tokens_to_ids(pose_tok.token_strings())
    ids = found if isinstance(found, list) else [found]
    unk = tokenizer.unk_token_id
    if any(i is None or i == unk for i in ids):
        raise ValueError("tokenizer lacks pose tokens; call extend_tokenizer() first")
    arr = np.asarray(ids, dtype=np.int64).reshape(len(GROUPS), pose_tok.num_bins)
    return {g: arr[i] for i, g in enumerate(GROUPS)}


def encode_words(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
