"""PyTorch reference of automl-train's intent classifier, for scripts/bench.sh train.

The same tokenizer, vocabulary, seeded split, seeded initial weights, shuffles, model
(mean EmbeddingBag -> Linear -> ReLU -> Linear -> ReLU -> Linear), loss, SGD with gradient
clipping by global norm and learning-rate decay when validation accuracy stops improving, as
training-code/text-classification implements them. Prints one JSON line.

Usage: reference.py TRAIN_DIR EVAL_DIR   (each with examples.csv and labels.csv)
Environment: EPOCHS LR BATCH_SIZE FC_SIZE EMBED_DIM SEED CLIP_NORM LR_DECAY (same defaults),
EXCLUDE_LABEL (default oos), REFERENCE_SPARSE=1 for a sparse embedding gradient.
"""

import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

MASK = (1 << 64) - 1


class SplitMix64:
    """The generator of src/rng.rs, stream for stream."""

    STREAMS = {"split": 1, "init": 2, "shuffle": 3}

    def __init__(self, seed, stream):
        self.state = (seed ^ (self.STREAMS[stream] * 0xD1B54A32D192ED03)) & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next_u64() % n

    def uniform(self, lo, hi, count):
        units = np.array([self.next_u64() >> 40 for _ in range(count)], dtype=np.float32)
        units *= np.float32(1.0 / (1 << 24))
        lo, hi = np.float32(lo), np.float32(hi)
        return lo + (hi - lo) * units

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def tokenize(text):
    """src/tokenizer.rs: lowercase words, numbers kept whole, other symbols one token each."""
    chars = [c for ch in text for c in ch.lower()]
    tokens, word = [], []
    for i, c in enumerate(chars):
        if c.isalnum():
            word.append(c)
            continue
        if (c in ".," and word and word[-1] in "0123456789"
                and i + 1 < len(chars) and chars[i + 1] in "0123456789"):
            word.append(c)
            continue
        if word:
            tokens.append("".join(word))
            word = []
        if not c.isspace():
            tokens.append(c)
    if word:
        tokens.append("".join(word))
    return tokens


def read_snapshot(folder):
    with open(os.path.join(folder, "labels.csv"), newline="", encoding="utf-8") as f:
        labels = [name for _, name in csv.reader(f)]
    with open(os.path.join(folder, "examples.csv"), newline="", encoding="utf-8") as f:
        examples = [(text, int(ids.split(";")[0]) - 1) for text, ids in csv.reader(f)]
    return labels, examples


def split(examples, seed):
    n = len(examples)
    order = list(range(n))
    SplitMix64(seed, "split").shuffle(order)
    n_test = max(1, math.floor(n * 0.10 + 0.5))
    n_val = max(1, math.floor((n - n_test) * 0.05 + 0.5))
    pick = lambda idx: [examples[i] for i in idx]
    return pick(order[n_test + n_val:]), pick(order[n_test:n_test + n_val]), pick(order[:n_test])


def build_vocab(texts):
    counts = {}
    for text in texts:
        for token in tokenize(text):
            counts[token] = counts.get(token, 0) + 1
    counts.pop("<unk>", None)
    tokens = ["<unk>"] + sorted(counts, key=lambda t: (-counts[t], t))
    return {t: i for i, t in enumerate(tokens)}


class Model(nn.Module):
    def __init__(self, vocab_size, embed_dim, fc_size, num_classes, seed, sparse):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", sparse=sparse)
        self.fc1 = nn.Linear(embed_dim, fc_size)
        self.fc2 = nn.Linear(fc_size, fc_size)
        self.fc3 = nn.Linear(fc_size, num_classes)
        rng = SplitMix64(seed, "init")
        with torch.no_grad():
            table = rng.uniform(-0.5, 0.5, vocab_size * embed_dim)
            self.embedding.weight.copy_(torch.from_numpy(table).view(vocab_size, embed_dim))
            for layer in (self.fc1, self.fc2, self.fc3):
                out_f, in_f = layer.weight.shape
                bound = np.float32(1.0) / np.sqrt(np.float32(in_f))
                w = rng.uniform(-bound, bound, out_f * in_f)
                b = rng.uniform(-bound, bound, out_f)
                layer.weight.copy_(torch.from_numpy(w).view(out_f, in_f))
                layer.bias.copy_(torch.from_numpy(b))

    def forward(self, ids, offsets):
        x = self.embedding(ids, offsets)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def batch_tensors(encoded):
    lengths = [len(ids) for ids, _ in encoded]
    offsets = torch.tensor([0] + lengths[:-1], dtype=torch.long).cumsum(0)
    flat = torch.tensor([i for ids, _ in encoded for i in ids], dtype=torch.long)
    labels = torch.tensor([label for _, label in encoded], dtype=torch.long)
    return flat, offsets, labels


def accuracy(model, encoded):
    if not encoded:
        return 0.0, []
    predicted = []
    with torch.no_grad():
        for start in range(0, len(encoded), 512):
            flat, offsets, _ = batch_tensors(encoded[start:start + 512])
            predicted += model(flat, offsets).argmax(1).tolist()
    hits = sum(p == label for p, (_, label) in zip(predicted, encoded))
    return hits / len(encoded), predicted


def main(train_dir, eval_dir):
    env = os.environ
    epochs = int(env.get("EPOCHS", 15))
    lr = float(env.get("LR", 4))
    batch_size = int(env.get("BATCH_SIZE", 64))
    fc_size = int(env.get("FC_SIZE", 128))
    embed_dim = int(env.get("EMBED_DIM", 64))
    seed = int(env.get("SEED", 42))
    clip_norm = float(env.get("CLIP_NORM", 0.1))
    lr_decay = float(env.get("LR_DECAY", 0.1))
    sparse = env.get("REFERENCE_SPARSE") == "1"
    exclude = env.get("EXCLUDE_LABEL", "oos")
    torch.manual_seed(seed)
    wall_start = time.perf_counter()

    labels, examples = read_snapshot(train_dir)
    train, val, test = split(examples, seed)
    vocab = build_vocab(text for text, _ in train)
    encode = lambda rows: [([vocab.get(t, 0) for t in tokenize(text)], label) for text, label in rows]
    train_e, val_e, test_e = encode(train), encode(val), encode(test)
    model = Model(len(vocab), embed_dim, fc_size, len(labels), seed, sparse)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = SplitMix64(seed, "shuffle")
    order = list(range(len(train_e)))
    best_val, train_seconds, history = -1.0, 0.0, []
    for epoch in range(1, epochs + 1):
        shuffle.shuffle(order)
        batches = [batch_tensors([train_e[i] for i in order[s:s + batch_size]])
                   for s in range(0, len(order), batch_size)]
        model.train()
        started = time.perf_counter()
        loss_sum = 0.0
        for flat, offsets, target in batches:
            optimizer.zero_grad()
            logits = model(flat, offsets)
            loss = loss_fn(logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            loss_sum += loss.item() * len(target)
        seconds = time.perf_counter() - started
        train_seconds += seconds
        model.eval()
        val_acc, _ = accuracy(model, val_e)
        if val_acc > best_val:
            best_val = val_acc
        else:
            for group in optimizer.param_groups:
                group["lr"] *= lr_decay
        history.append({"epoch": epoch, "loss": loss_sum / len(train_e), "val_accuracy": val_acc,
                        "examples_per_sec": len(train_e) / seconds})
        print(f"reference epoch {epoch}/{epochs}: loss {loss_sum / len(train_e):.4f} "
              f"val_accuracy {val_acc:.4f} examples_per_sec {len(train_e) / seconds:.0f}",
              file=sys.stderr)
    test_acc, _ = accuracy(model, test_e)
    wall = time.perf_counter() - wall_start

    eval_labels, eval_examples = read_snapshot(eval_dir)
    class_of = {name: i for i, name in enumerate(labels)}
    names = [eval_labels[label] for _, label in eval_examples]
    eval_e = [([vocab.get(t, 0) for t in tokenize(text)], class_of.get(eval_labels[label], -1))
              for text, label in eval_examples]
    all_acc, predicted = accuracy(model, eval_e)
    kept = [(p, label) for p, (_, label), name in zip(predicted, eval_e, names) if name != exclude]
    in_scope = sum(p == label for p, label in kept) / max(1, len(kept))
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "sparse_embedding_grad": sparse,
        "train_examples": len(train_e), "validation_examples": len(val_e),
        "test_examples": len(test_e), "vocab": len(vocab), "classes": len(labels),
        "test_accuracy": test_acc,
        "eval_accuracy": all_acc, "eval_in_scope_accuracy": in_scope,
        "train_seconds": train_seconds, "wall_seconds": wall,
        "examples_per_sec": len(train_e) * epochs / train_seconds,
        "epochs": history,
    }))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
