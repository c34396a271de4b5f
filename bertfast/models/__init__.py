from bertfast.models.bert import BertModel
from bertfast.models.heads import (BertForMaskedLM, BertForMultipleChoice, BertForNextSentencePrediction,
                                   BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                                   BertForTokenClassification)
from bertfast.models.pretrained import BertPreTrainedModel

__all__ = ["BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForPreTraining",
           "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
           "BertPreTrainedModel"]
