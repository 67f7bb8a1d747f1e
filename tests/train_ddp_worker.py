"""One process of the two-process test: train from a config, then save this process's trained weights.

Run by `torchrun --standalone --nproc-per-node 2 tests/train_ddp_worker.py CONFIG OUT_DIR`.
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from rgbd_portrait.training import Trainer, load_config

config_path, out_dir = sys.argv[1], Path(sys.argv[2])
trainer = Trainer(load_config(config_path), show_progress=False)
trainer.run()
weights = {key: tensor.contiguous() for key, tensor in trainer.model.denoiser.state_dict().items()}
save_file(weights, out_dir / f"rank-{trainer.rank}-of-{trainer.world_size}.safetensors")
