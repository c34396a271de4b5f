"""bertfast: a fast, trustworthy BERT for PyTorch.

Importing bertfast never touches CUDA, imports neither triton nor transformers, and works without a GPU.
"""
from bertfast import ops
from bertfast.config import BertConfig
from bertfast.info import info
from bertfast.integrations import optimize, optimize_transformers, restore, restore_transformers
from bertfast.models import (BertForMaskedLM, BertForMultipleChoice, BertForNextSentencePrediction,
                             BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                             BertForTokenClassification, BertModel, BertPreTrainedModel)

__version__ = "0.1.0"
__all__ = ["BertConfig", "BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction",
           "BertForPreTraining", "BertForQuestionAnswering", "BertForSequenceClassification",
           "BertForTokenClassification", "BertModel", "BertPreTrainedModel", "info", "ops", "optimize",
           "optimize_transformers", "restore", "restore_transformers"]
