#!/usr/bin/env python3
"""Baseline for the embedder benchmark: the same BERT model in onnxruntime.

Builds an ONNX graph of the model from its safetensors weights (the standard BERT encoder,
opset 17), runs it with onnxruntime on the CPU with the model's own tokenizer (padded per
batch, truncated at 256 tokens), mean-pools over the attention mask and normalizes, as
sentence-transformers does. Prints sentences per second at batch 1 and batch 32 as JSON,
and checks its vectors against Engram's reference fixture when given.

    pip install onnxruntime onnx numpy tokenizers safetensors
    scripts/onnx_minilm_bench.py --model DIR --sentences FILE [--threads 2]
"""

import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_TOKENS = 256


def build_graph(model_dir):
    config = json.load(open(f"{model_dir}/config.json"))
    w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in load_file(f"{model_dir}/model.safetensors").items()}
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    d = hidden // heads
    eps = config.get("layer_norm_eps", 1e-12)
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    counter = [0]

    def node(op, inputs, **attrs):
        counter[0] += 1
        out = f"t{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def dense(x, name):
        wt = const(f"{name}.wT", w[f"{name}.weight"].T.copy())
        return node("Add", [node("MatMul", [x, wt]), const(f"{name}.b", w[f"{name}.bias"])])

    def norm(x, name):
        return node("LayerNormalization", [x, const(f"{name}.g", w[f"{name}.weight"]), const(f"{name}.beta", w[f"{name}.bias"])],
                    axis=-1, epsilon=eps)

    word = node("Gather", [const("word", w["embeddings.word_embeddings.weight"]), "input_ids"])
    pos = node("Gather", [const("pos", w["embeddings.position_embeddings.weight"]), "position_ids"])
    x = node("Add", [node("Add", [word, pos]), const("type0", w["embeddings.token_type_embeddings.weight"][0])])
    x = norm(x, "embeddings.LayerNorm")
    split = const("split_shape", np.array([0, 0, heads, d], dtype=np.int64))
    merge = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(d), dtype=np.float32))
    half, one, sqrt2 = (const(n, np.array(v, dtype=np.float32)) for n, v in [("half", 0.5), ("one", 1.0), ("sqrt2", np.sqrt(2.0))])
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = node("Transpose", [node("Reshape", [dense(x, f"{p}.attention.self.query"), split])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [dense(x, f"{p}.attention.self.key"), split])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [dense(x, f"{p}.attention.self.value"), split])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), "mask_bias"])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge])
        x = norm(node("Add", [dense(ctx, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
        h = dense(x, f"{p}.intermediate.dense")
        h = node("Mul", [node("Mul", [h, half]), node("Add", [one, node("Erf", [node("Div", [h, sqrt2])])])])
        x = norm(node("Add", [dense(h, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    graph = helper.make_graph(
        nodes,
        "bert",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["s"]),
            helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["b", 1, 1, "s"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "s", hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class OnnxEmbedder:
    def __init__(self, model_dir, threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(build_graph(model_dir).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        self.tok.enable_padding()
        self.tok.enable_truncation(MAX_TOKENS)

    def embed(self, texts):
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        s = ids.shape[1]
        bias = ((mask - 1.0) * 1e9)[:, None, None, :].astype(np.float32)
        hidden = self.session.run(["hidden"], {"input_ids": ids, "position_ids": np.arange(s, dtype=np.int64),
                                               "mask_bias": bias})[0]
        pooled = (hidden * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def rate(embedder, sentences, batch):
    embedder.embed(sentences[:batch])  # warm up
    start = time.perf_counter()
    for i in range(0, len(sentences), batch):
        embedder.embed(sentences[i:i + batch])
    return len(sentences) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sentences", required=True, help="one sentence per line")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--reference", help="a fixture of reference vectors to check against")
    args = ap.parse_args()
    embedder = OnnxEmbedder(args.model, args.threads)
    sentences = [l.rstrip("\n") for l in open(args.sentences) if l.strip()]
    if args.reference:
        for line in open(args.reference):
            case = json.loads(line)
            got = embedder.embed([case["id"]])[0]
            cos = float(np.dot(got, np.array(case["vector"], dtype=np.float32)))
            assert cos > 0.999, (case["id"][:40], cos)
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "batch1_per_sec": rate(embedder, sentences[:200], 1),
        "batch32_per_sec": rate(embedder, sentences, 32),
    }))


if __name__ == "__main__":
    main()
