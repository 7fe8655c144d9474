"""PyTorch side of the sentence-encoder benchmark (scripts/bench/encoder.sh).

Usage: python encoder_reference.py MODEL_DIR SENTENCES_FILE [--batch-sizes 32,1] [--seconds S]

Loads all-MiniLM-L6-v2 from MODEL_DIR with transformers (AutoTokenizer, AutoModel; local files
only) and encodes on the CPU, under torch.inference_mode(), as sentence-transformers does: the
tokenizer pads each batch to its longest sentence and truncates at 128 tokens, the last hidden
states are mean-pooled over the attention mask, then L2-normalised.

Prints first a check line, {"check": [first 6 values of the embedding of "This is an example
sentence"], "cosine": cosine of that embedding with the one of "Each sentence is converted"}, then
one JSON line per batch size: SENTENCES_FILE (one sentence per line, empty lines skipped) is
encoded in order in batches of that size (the last batch of a pass may be shorter), pass after
pass, until at least S seconds passed after one warm-up batch (not counted):
{"side": "pytorch", "batch": B, "sentences": N, "seconds": s, "sentences_per_sec": x,
 "threads": torch.get_num_threads(), "framework": "torch X / transformers Y"}
"""

import argparse
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

MAX_LENGTH = 128


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("sentences_file")
    parser.add_argument("--batch-sizes", default="32,1",
                        help="comma-separated batch sizes (default 32,1)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="minimum timed seconds per batch size (default 10)")
    args = parser.parse_args()
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes: not a list of integers: {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes: give at least one size, each at least 1")
    return args


class Encoder:
    def __init__(self, model_dir):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to("cpu").eval()

    def encode(self, sentences):
        """L2-normalised mean-pooled embeddings of `sentences`, one row each."""
        batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=MAX_LENGTH,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def batches(sentences, size):
    """The sentences in order in batches of `size`, pass after pass, forever."""
    while True:
        for start in range(0, len(sentences), size):
            yield sentences[start:start + size]


def bench(encoder, sentences, size, seconds):
    stream = batches(sentences, size)
    encoder.encode(next(stream))  # warm-up
    count = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        batch = next(stream)
        encoder.encode(batch)
        count += len(batch)
        elapsed = time.perf_counter() - start
    return count, elapsed


def main():
    args = parse_args()
    with open(args.sentences_file, encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    if not sentences:
        sys.exit(f"{args.sentences_file}: no sentences")

    encoder = Encoder(args.model_dir)
    framework = f"torch {torch.__version__} / transformers {transformers.__version__}"
    with torch.inference_mode():
        check = encoder.encode(["This is an example sentence", "Each sentence is converted"])
        print(json.dumps({
            "check": [round(v, 8) for v in check[0, :6].tolist()],
            "cosine": round(float(check[0] @ check[1]), 6),
        }), flush=True)
        for size in args.batch_sizes:
            count, elapsed = bench(encoder, sentences, size, args.seconds)
            print(json.dumps({
                "side": "pytorch",
                "batch": size,
                "sentences": count,
                "seconds": round(elapsed, 3),
                "sentences_per_sec": round(count / elapsed, 2),
                "threads": torch.get_num_threads(),
                "framework": framework,
            }), flush=True)


if __name__ == "__main__":
    main()
