"""What can be known of bertfast's GPU path without a GPU (importing this needs triton, not a GPU).

- predict(fn, *args, gpu="h200", **kwargs): the predicted time of every kernel fn launches (predict.py)
- trace.gpu_trace: the GPU path run on meta tensors, every launch, allocation and host sync recorded
- sm90: the static model of compiled sm_90 code; `python -m bertfast.analysis` prints BERT's report
- gpus: the H100 SXM and H200 constants, each with its source
- calibrate: the model against Liger-Kernel's measured H100 kernels (`python -m bertfast.analysis.calibrate`)
- traffic: each op's allocations, launches and syncs against its design
"""
from bertfast.analysis.predict import LaunchPrediction, predict, total_us

__all__ = ["LaunchPrediction", "predict", "total_us"]
