"""Training: data (tokeniser, pre-training pairs, masking, task records), prepare (an on-disk tokenised
corpus), pretrain and finetune (the loops behind the command line), distributed launch, LAMB."""
