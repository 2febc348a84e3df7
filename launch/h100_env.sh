# Environment for JAX on H100 nodes (sourced by the launchers; no run settings here).
# Latency-hiding scheduler and async collectives overlap ring ppermutes and FSDP
# all-gathers with compute; the pipelined collectives fuse per-layer gathers/reduces.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true
 --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_highest_priority_async_stream=true
 --xla_gpu_enable_pipelined_all_gather=true --xla_gpu_enable_pipelined_reduce_scatter=true
 --xla_gpu_enable_pipelined_all_reduce=true --xla_gpu_enable_while_loop_double_buffering=true
 --xla_gpu_all_reduce_combine_threshold_bytes=134217728
 --xla_gpu_all_gather_combine_threshold_bytes=134217728
 --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728"
export XLA_FLAGS="$(echo $XLA_FLAGS | tr '\n' ' ')"
# Let XLA take most of the 80 GB; the rest is for cuDNN/NCCL workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-1}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
export HF_HUB_OFFLINE=1
