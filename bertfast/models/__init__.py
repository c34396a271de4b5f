from bertfast.models.bert import BertModel, BertPreTrainedModel
from bertfast.models.heads import (BertForMaskedLM, BertForMultipleChoice, BertForNextSentencePrediction,
                                   BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                                   BertForTokenClassification)

__all__ = ["BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForPreTraining",
           "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
           "BertPreTrainedModel"]
