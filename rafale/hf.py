"""rafale's RetNet as a transformers model, without remote code: import this module, then use the Auto classes.

    import rafale.hf  # registers model_type "rafale_retnet" with AutoConfig and AutoModelForCausalLM
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("runs/retnet/final")   # or a `rafale export` directory
    model.generate(input_ids, max_new_tokens=20)                        # decodes with the recurrent state

RetNetForCausalLM holds a rafale.models.retnet.RetNet as `model` (so the files' tensor names are `model.` +
rafale's own, see weights.RETNET) and forwards to it. Its `past_key_values` is the RetentionState: generate()
is told not to make a DynamicCache (there are no keys or values to cache), and prepare_inputs_for_generation
passes only the new token once the state holds the prompt. Left-padded batches work through
attention_mask, as in rafale's own generate.

transformers is an interop dependency: only code that talks to it imports this module, never rafale's core.
"""

import dataclasses

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from rafale.models import retnet

RETNET_FIELDS = [f.name for f in dataclasses.fields(retnet.RetNetConfig) if f.name != "name"]


class RetNetConfig(PretrainedConfig):
    """rafale's RetNetConfig fields as a transformers config (config.json holds them under their own names)."""

    model_type = "rafale_retnet"

    def __init__(self, **kwargs):
        defaults = retnet.RetNetConfig()
        fields = {key: kwargs.pop(key, getattr(defaults, key)) for key in RETNET_FIELDS}
        kwargs.setdefault("tie_word_embeddings", fields["tie_embeddings"])
        super().__init__(**kwargs)
        for key, value in fields.items():
            setattr(self, key, value)
        # the names transformers' generation and pipeline code read
        self.hidden_size, self.num_hidden_layers = fields["n_embd"], fields["n_layer"]
        self.num_attention_heads, self.max_position_embeddings = fields["n_head"], fields["max_seq_len"]

    def rafale_config(self) -> retnet.RetNetConfig:
        return retnet.RetNetConfig(name=self.name_or_path or "retnet",
                                   **{key: getattr(self, key) for key in RETNET_FIELDS})


class RetNetForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RetNetConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: RetNetConfig):
        super().__init__(config)
        self.model = retnet.RetNet(config.rafale_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the RetentionState is made by prepare_inputs_for_generation, not a KV cache

    def _init_weights(self, module):
        """from_pretrained builds the model on the meta device, fills the tensors the files hold, and calls this
        for the rest: the rotary tables and decays, which no file holds."""
        if isinstance(module, retnet.RetNet):
            module.init_buffers()

    def get_input_embeddings(self):
        return self.model.wte

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(self, input_ids, attention_mask=None, past_key_values=None, labels=None, use_cache=None,
                **kwargs) -> CausalLMOutputWithPast:
        """Logits of input_ids; with past_key_values (a RetentionState) the tokens continue it. attention_mask
        covers every position so far, as in transformers' generate; positions count its real tokens."""
        position_ids = None
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.size(1):]
            if bool(attention_mask.all()):
                attention_mask = position_ids = None  # no padding: the fastest path
        logits = self.model(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                            kv_cache=past_key_values)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        if past_key_values is None:  # the prompt: a fresh state, filled by the chunkwise form
            past_key_values = self.model.make_kv_cache(input_ids.size(0), input_ids.size(1))
        else:  # one new token, recurrent
            input_ids = input_ids[:, past_key_values.pos:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values}


AutoConfig.register(RetNetConfig.model_type, RetNetConfig, exist_ok=True)
AutoModelForCausalLM.register(RetNetConfig, RetNetForCausalLM, exist_ok=True)
