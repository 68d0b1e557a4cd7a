"""Run by tests/test_install.py with a clean virtualenv's python: load the bundled default model
offline, then build a tiny ColQwen2.5 (tests/encoders_tiny.py), load it through pgmaxsim and encode a
query and an image with it. argv[1]: the tests/ folder (for encoders_tiny). Prints one line per step."""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, sys.argv[1])

import pgmaxsim
from pgmaxsim.encoders.registry import load_encoder

assert not pgmaxsim.__file__.startswith(str(Path(sys.argv[1]).parent)), pgmaxsim.__file__  # the installed copy
t = time.perf_counter()
enc = load_encoder()  # the bundled default
q = np.asarray(enc.encode_query("revenue by region"))
print(f"default {enc.family} dim={q.shape[1]} tokens={q.shape[0]} {time.perf_counter() - t:.1f}s")

import peft
import torch
import torchvision
import transformers

print(f"versions torch={torch.__version__} torchvision={torchvision.__version__}"
      f" transformers={transformers.__version__} peft={peft.__version__}")

import encoders_tiny as tiny
from PIL import Image

with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    e = load_encoder(str(tiny.build_colqwen2_5(Path(d) / "colqwen2_5")), device="cpu")
    query = np.asarray(e.encode_query("what is on this page?"))
    page = np.asarray(e.encode_documents([Image.new("RGB", (64, 64), (200, 30, 30))])[0])
    print(f"tiny {e.family} dim={query.shape[1]} query={query.shape[0]} image={page.shape[0]}"
          f" {time.perf_counter() - t:.1f}s")
print("OK")
