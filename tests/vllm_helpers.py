"""Tiny offline HF models for tests that drive a real engine (vLLM, HF): built here, no hub.

`build_tiny_llama(out_dir)` writes a HF-format directory that `vllm.LLM` and
`transformers.AutoModelForCausalLM` both load offline:

* `tokenizer.json`: a byte-level BPE trained on KJV text with the Llama-3 special tokens,
* `tokenizer_config.json`: the Llama-3 chat template, bos/eos tokens,
* `config.json` + `model.safetensors`: a random-weight 2-layer Llama (head_dim 32, which the
  vLLM CPU attention supports),
* `generation_config.json`: stops on `<|eot_id|>` and `<|end_of_text|>`.

A purely random model rambles; structured-output tests need strings that end. With
`unigram_bias` the model gets a constant residual feature that the unembedding maps to a fixed
per-token logit bias, so the output distribution is "random + a unigram prior" that favours a
few common words and the closing quote. This module imports neither vLLM nor JAX, so it runs
in both the system python and `.venv-vllm`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>")

# Llama-3's chat template, written out for the tiny tokenizer (same rendering as Llama-3.x
# without tools): header, two newlines, content, <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}")

VLLM_PYTHON_REL = os.path.join(".venv-vllm", "bin", "python")


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vllm_python() -> str:
    """Path of the vLLM venv interpreter; raises (never skips) with the fix when it is absent."""
    py = os.path.join(repo_root(), VLLM_PYTHON_REL)
    if not os.path.exists(py):
        raise RuntimeError(
            f"{py} does not exist: the vLLM tests need the vLLM virtual environment. "
            "Build it with `bash datagen/vllm_env.sh` (or `bash setup.sh --dev`).")
    return py


def run_in_vllm_venv(script: str, args: list[str], timeout: float = 600.0
                     ) -> subprocess.CompletedProcess:
    """Runs `python script args...` in `.venv-vllm` with offline env; raises with its stderr."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="WARNING",
               VLLM_ENABLE_V1_MULTIPROCESSING=os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
               PYTHONPATH=repo_root())
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([vllm_python(), script, *args], cwd=repo_root(), env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{os.path.basename(script)} failed (rc={proc.returncode}):\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-8000:]}")
    return proc


def train_tokenizer(text: str, out_dir: str, vocab_size: int = 1024) -> str:
    """Trains a byte-level BPE `tokenizer.json` (+ Llama-3 chat `tokenizer_config.json`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(LLAMA3_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>",
              "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
              "chat_template": LLAMA3_CHAT_TEMPLATE}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return os.path.join(out_dir, "tokenizer.json")


def build_tiny_llama(out_dir: str, text: str | None = None, *, vocab_size: int = 1024,
                     hidden_size: int = 64, num_layers: int = 2, max_positions: int = 4096,
                     unigram_bias: bool = True, qk_scale: float = 1.0, seed: int = 0,
                     rope_parameters: dict[str, Any] | None = None) -> str:
    """Writes a tiny random Llama + KJV BPE tokenizer into `out_dir` (HF format); returns it.

    Args:
      out_dir: target directory (created).
      text: tokenizer training text; defaults to the first 400k characters of the KJV.
      vocab_size: BPE vocabulary size (the model's embedding matches the trained size).
      hidden_size: model width; heads are hidden_size // 32 (head_dim 32), one KV head group.
      num_layers: decoder layers.
      max_positions: `max_position_embeddings`.
      unigram_bias: add the constant-feature unigram prior described in the module docstring.
      qk_scale: multiplies the q/k projections: random init gives near-uniform attention,
        where position (RoPE) barely matters; a larger scale makes attention position-aware.
      seed: torch seed for the weights.
      rope_parameters: optional HF v5 `rope_parameters` (e.g. a llama3/yarn scaling).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    if text is None:
        from lctx.corpora import kjv_text
        text = kjv_text()[:400_000]
    train_tokenizer(text, out_dir, vocab_size)
    tok = PreTrainedTokenizerFast.from_pretrained(out_dir)
    specials = {s: tok.convert_tokens_to_ids(s) for s in LLAMA3_SPECIALS}
    heads = hidden_size // 32
    kwargs: dict[str, Any] = {}
    if rope_parameters is not None:
        kwargs["rope_parameters"] = dict(rope_parameters)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
        bos_token_id=specials["<|begin_of_text|>"], eos_token_id=specials["<|eot_id|>"],
        pad_token_id=specials["<|end_of_text|>"], tie_word_embeddings=False,
        torch_dtype="float32", **kwargs)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    if qk_scale != 1.0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(qk_scale)
                layer.self_attn.k_proj.weight.mul_(qk_scale)
    if unigram_bias:
        _add_unigram_prior(model, tok)
    model.save_pretrained(out_dir, safe_serialization=True)
    gen = {"bos_token_id": specials["<|begin_of_text|>"],
           "eos_token_id": [specials["<|eot_id|>"], specials["<|end_of_text|>"]],
           "do_sample": False}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=1)
    return out_dir


def _add_unigram_prior(model, tok) -> None:
    """Dimension 0 of the residual stream becomes a constant; lm_head column 0 a logit bias.

    Every embedding row gets a large value in dim 0 and no layer writes to dim 0, so after the
    final RMSNorm that coordinate is ~constant and `lm_head[:, 0]` acts as a per-token bias.
    """
    import torch
    with torch.no_grad():
        emb_VD = model.model.embed_tokens.weight
        emb_VD[:, 0] = 4.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        bias_V = torch.full((emb_VD.shape[0],), -3.0)
        favoured = [" the", " and", " of", " LORD", " God", " he", " unto", "."]
        for word in favoured:
            ids = tok.encode(word, add_special_tokens=False)
            if len(ids) == 1:
                bias_V[ids[0]] = 1.2
        for closer in ('"', '",', '"}', "}"):
            ids = tok.encode(closer, add_special_tokens=False)
            if len(ids) == 1:
                bias_V[ids[0]] = 1.6
        bias_V[tok.convert_tokens_to_ids("<|eot_id|>")] = 0.8
        # After RMSNorm dim 0 is ~4/sqrt(16/D) = sqrt(D): divide so logits ~ bias_V.
        model.lm_head.weight[:, 0] = bias_V / emb_VD.shape[1] ** 0.5


if __name__ == "__main__":  # python tests/vllm_helpers.py OUT_DIR  (used by bench/ and demos)
    sys.path.insert(0, repo_root())
    print(build_tiny_llama(sys.argv[1]))


class FakeOpenAIServer:
    """OpenAI-compatible server on 127.0.0.1 (a thread) that misbehaves on request.

    The prompt (last chat message, or `prompt` for /completions) picks the behaviour of the
    first N attempts of that prompt: `#429xN`, `#500xN`, `#slowxN` (sleeps `slow_s`, past the
    client timeout), `#garbagexN` (200 with a non-JSON body); `#400` always answers 400 and
    `#500always` always 500. Then it answers "echo: <prompt>" (finish_reason "stop", or
    "length" when the prompt holds `#length`). Every request body and Authorization header is
    recorded; `max_in_flight` is the peak of concurrent requests.
    """

    def __init__(self, slow_s: float = 1.0, delay_s: float = 0.0):
        import http.server
        import re
        import threading
        self.slow_s, self.delay_s = slow_s, delay_s
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, payload: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path == "/v1/models":
                    data = [{"id": "fake-model", "object": "model", "max_model_len": 4096}]
                    return self._send(200, json.dumps({"data": data}).encode())
                self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                import time
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = (body["messages"][-1]["content"] if "messages" in body
                          else body.get("prompt", ""))
                if isinstance(prompt, list):
                    prompt = " ".join(map(str, prompt))
                key = self.path + "|" + prompt
                with lock:
                    outer.bodies.append(body)
                    outer.auth.append(self.headers.get("Authorization"))
                    n = outer.attempts[key] = outer.attempts.get(key, 0) + 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(outer.delay_s)
                    m = re.search(r"#(429|500|slow|garbage)x(\d+)", prompt)
                    if "#400" in prompt:
                        return self._send(400, b'{"error": "bad request"}')
                    if "#500always" in prompt:
                        return self._send(500, b'{"error": "down"}')
                    if m and n <= int(m.group(2)):
                        kind = m.group(1)
                        if kind == "slow":
                            time.sleep(outer.slow_s)
                            return self._send(200, b"{}")
                        if kind == "garbage":
                            return self._send(200, b"<html>oops", "text/html")
                        return self._send(int(kind), b'{"error": "try later"}')
                    reason = "length" if "#length" in prompt else "stop"
                    text = f"echo: {prompt}"
                    if "messages" in body:
                        choice = {"index": 0, "finish_reason": reason,
                                  "message": {"role": "assistant", "content": text}}
                    else:
                        choice = {"index": 0, "finish_reason": reason, "text": text}
                    self._send(200, json.dumps({"object": "x", "choices": [choice]}).encode())
                finally:
                    with lock:
                        outer.in_flight -= 1

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
