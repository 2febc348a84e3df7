# Environment for JAX on H100/H200 nodes (sourced by the launchers; no run settings here).
#
# Every flag says what it is for and what measured it. The single-GPU effect of a flag is
# timed by `python3 bench/gpu_bench.py` (section `flags`: the 4-layer Llama-3.1-8B-shaped
# cuDNN training step at T=32K, one subprocess per flag, ratio to the baseline in the same run;
# the whole set below is also run there, which checks that the GPU's XLA knows every name).
# Flags for collectives (ring ppermutes, FSDP all-gathers / reduce-scatters) only act with
# several GPUs; no multi-GPU machine has been lent, so they are UNMEASURED: kept because they
# are the documented settings for overlapping collectives with compute in the JAX/XLA GPU
# performance guides (MaxText, the JAX-Toolbox recipes), not because lctx measured a gain.
_lctx_xla_flags=(
  # Schedule async collectives (ring K/V ppermutes, FSDP gathers) to overlap compute.
  # UNMEASURED across GPUs; bench/gpu_bench.py times its 1-GPU cost (`latency_hiding`).
  --xla_gpu_enable_latency_hiding_scheduler=true
  # cuBLAS instead of Triton-generated GEMMs. bench/gpu_bench.py times it (`no_triton_gemm`);
  # UNMEASURED until that device run is recorded here.
  --xla_gpu_enable_triton_gemm=false
  # Collectives on the highest-priority stream so they are not queued behind compute.
  # UNMEASURED: acts only with collectives (several GPUs).
  --xla_gpu_enable_highest_priority_async_stream=true
  # Pipeline the per-layer FSDP all-gather / reduce-scatter / all-reduce across the layer scan.
  # UNMEASURED: acts only with collectives (several GPUs).
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  # Double-buffer the layer scan's loop-carried values so collectives of step i+1 overlap
  # step i. UNMEASURED across GPUs; bench/gpu_bench.py times its 1-GPU cost.
  --xla_gpu_enable_while_loop_double_buffering=true
  # Combine small collectives up to 128 MiB into one launch. UNMEASURED (several GPUs).
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
)
export XLA_FLAGS="${XLA_FLAGS:-} ${_lctx_xla_flags[*]}"
unset _lctx_xla_flags
# Let XLA take most of the 80 GB; the rest is for cuDNN/NCCL workspaces. UNMEASURED: no
# out-of-memory at 0.92 has been seen because no multi-GPU run has been made yet.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# InfiniBand and NVLink SHARP for NCCL across nodes. UNMEASURED (several nodes).
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-1}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
export HF_HUB_OFFLINE=1
