from bertfast.models.bert import BertModel, BertPreTrainedModel

__all__ = ["BertModel", "BertPreTrainedModel"]
