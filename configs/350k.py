r"""He et al. 2025 stepwise RoPE scaling of Llama-3.1-8B-Instruct, up to the 350K stage.

Command (SLURM, see launch/):
    sbatch --nodes=N launch/slurm_train.sh configs/350k.py runs/paper
or one node: python3 -m lctx.train --config=configs/350k.py --workdir=runs/paper \
    --config.ckpt.init_from=/path/to/Llama-3.1-8B-Instruct
Args (:k=v,...): rope=ntk|llama3, data_root=DIR, batch=8, epochs=1.
The mesh puts every device of the job on the context (ring) axis.

Hardware: H100 80GB nodes of 8 (180K: 1 node, 350K: 2, 650K and 1M: 4; mesh context axis
= all devices). Expected time (He et al., 8-32 H100s): ~30 h through 650K, +52.5 h for 1M.
Expected result: RULER / InfiniteBench as in He et al. Table 1 and Figure 4 for the last
stage (InfiniteBench average ~59 at 180K, ~55 at 1M). Stages already finished in the
workdir are skipped; see configs/paper.py for the per-stage choices.
"""
from configs import paper


def get_config(arg=None):
    return paper.paper_config(2, arg)
