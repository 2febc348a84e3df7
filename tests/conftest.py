"""Test set-up: 8 simulated CPU devices, parsed absl flags, shared tiny tokenizer."""
import os

# Must precede any JAX import: every test sees 8 CPU devices (meshes are simulated).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's multiprocessing reads absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def kjv_text():
    from lctx.corpora import kjv_text as load
    return load()


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, kjv_text):
    """A 1024-piece BPE SentencePiece model trained on the KJV (with Llama-3 specials)."""
    from lctx.tokenizer import train_sentencepiece
    out = tmp_path_factory.mktemp("tok") / "kjv1k"
    return train_sentencepiece(kjv_text[:1_500_000], 1024, str(out))


@pytest.fixture
def cudnn_twin(monkeypatch):
    """Runs the 'cudnn' block kernel's own code on CPU: lctx.cudnn_attention with its XLA
    twin backend, which takes cuDNN's exact arguments and returns its exact layouts."""
    from lctx import blocks
    monkeypatch.setitem(blocks.KERNELS, "cudnn", blocks._cudnn_kernel("xla"))
