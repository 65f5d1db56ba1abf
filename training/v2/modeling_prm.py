"""The v2 PRM as a transformers model: a Qwen2 body and a two-class score head at every token.

The module and parameter names are vLLM's ``Qwen2ForProcessRewardModel`` (``model.*``, ``score.0``, ReLU,
``score.2``), so the weights the recipe trains with this class are the weights vLLM serves. The file is
copied into the PRM's directory and named in ``auto_map``, so
``AutoModel.from_pretrained(prm_dir, trust_remote_code=True)`` gives reference scores outside vLLM.
It imports only torch and transformers: as remote code it is loaded on its own, away from this package.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    config_class = Qwen2Config

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        hidden = config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.num_labels))
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        """Per-token logits (batch, seq, num_labels); softmax class 1 at a ``<extra_0>`` is the step's score.
        ``labels`` (-100 where unlabelled) adds their cross-entropy as ``loss``."""
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=False
        ).last_hidden_state
        logits = self.score(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), labels.view(-1), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)
