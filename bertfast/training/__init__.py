"""Training: data (tokeniser, pre-training pairs, masking, task records), prepare (an on-disk tokenised
corpus), pretrain and finetune (the loops behind the command line), distributed launch, LAMB."""

import os as _os

PRETRAIN_OUT = _os.path.join("checkpoints", "pretrain")  # `python -m bertfast pretrain`'s default --out
