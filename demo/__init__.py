"""The CPU demo: He et al. 2025 end to end in miniature (configs/demo.py).

    python3 -m lctx.train --config=configs/demo.py --workdir=runs/demo

`configs/demo.py` names `demo.pipeline:run` as its entry point; `lctx.train` imports it by
that name at run time, so `lctx` itself never imports the demo. Modules: `pipeline` (the
resumable phases: data, stages, evaluations, report), `data` (corpus, tokenizer, datagen
conversations, RULER-format retrieval and copy records), `report` (curves and summaries).
"""
