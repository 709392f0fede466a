"""Starting a run from a trained model (`charrnn train --init-from`): what it inherits, and what it records.

A fine-tuned run keeps the model's architecture (`init_model_options`), starts from its weights
(`inherit_params`; the rows of tokens an extended vocabulary adds are freshly initialized) and records
where it started (`origin`, saved in every model file it writes; modelmeta checks it when read).
The optimizer and the schedule start fresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..files import checkpoint, corpus, textfile
from ..files.config import TrainConfig
from ..core.model import ModelConfig
from ..data.vocab import UNK, Vocab
from ..tasks import registry as tasks
from .prepare import data_path, source


@dataclass
class InitFrom:
    """A trained model a new run starts from (`charrnn train --init-from`)."""
    params: dict
    config: ModelConfig
    vocab: Vocab
    meta: dict
    model_file: str
    extend: bool = False   # add the new text's tokens to the vocabulary (else they become UNK)


# The options that make up a model's architecture: a fine-tuned run takes them from the model.
ARCHITECTURE = ("cell", "layers", "hidden", "embed", "dtype")


def init_model_options(base: ModelConfig, given: dict) -> dict:
    """The ModelConfig options of a run fine-tuned from base: base's architecture, the dropout given (or None).

    - given: the model options the user set (name -> value); the request has checked that they fit base's
      architecture (request.TrainingRequest.fine_tune)
    """
    options = {key: value for key, value in base.to_dict().items()
               if key not in ("vocab_size", "classes", "dropout")}
    options["dropout"] = given.get("dropout")
    options["precision"] = given.get("precision") or base.precision  # how to train, not what the model is
    return options


def inherit_params(init: InitFrom, fresh: dict) -> dict:
    """The weights of init's model; where the vocabulary was extended, the new tokens' embedding and
    head rows are those of the fresh initialization (`fresh`, of the new vocabulary size)."""
    V = init.config.vocab_size
    checkpoint.check_params(init.params, init.config, init.model_file)
    params = {}
    for name, value in fresh.items():
        old = np.asarray(init.params[name], dtype=value.dtype)
        if name in ("embedding.weight", "head.weight", "head.bias"):
            params[name] = np.concatenate([old, value[V:]])  # ids < V keep their rows
        else:
            params[name] = old.copy()
    return params


def origin(init: InitFrom, vocab: Vocab, directory, train_text, val_text, tconfig: TrainConfig) -> dict:
    """What a fine-tuned run records about where it started: the model, and what became of the vocabulary."""
    def tokens(text):
        return tuple(textfile.seen_tokens(source(text, "", tasks.get(tconfig.task)), tconfig.level, tconfig.mode))
    seen = tokens(train_text)
    if val_text is not None:
        seen += tokens(val_text)
    known = set(vocab.tokens)
    unseen = sorted(set(seen) - known - ({"\n"} if tconfig.mode == "lines" else set()))
    unk = sum(int(np.count_nonzero(corpus.load_ids(data_path(directory, f"{split}.npy")) == UNK))
              for split in ("train", "val"))
    training = init.meta.get("training", {}) if isinstance(init.meta.get("training"), dict) else {}
    return {"model_file": os.path.abspath(init.model_file), "step": training.get("step"),
            "vocab": "extended" if init.extend else "kept", "base_tokens": init.vocab.size,
            "added": list(vocab.tokens[init.vocab.size:]), "unk_tokens": unk, "unseen": unseen[:200],
            "n_unseen": len(unseen)}

