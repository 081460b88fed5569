"""Data: from `data.source` to cached, memory-mapped training examples.

    sources.py         what a source is (files, globs, folders, save_to_disk, hub ids, synthetic) and its splits
    tokenizer.py       load a tokenizer.json / folder / hub id, or train bpe|wordpiece|unigram (cached)
    prepare.py         prepare(cfg.data) -> PreparedData: the cache key, the atomic build, checked reuse
    cache.py           cache layout, key hash, locked atomic entries, list/clear
    causal_lm.py       documents -> EOS-separated flat tokens -> blocks (what training uses today)
    sft.py             prompt/response -> masked labels, optional packing
    classification.py  [CLS] a [SEP] (b [SEP]) -> label id, label set stored with the cache
    mlm.py             flat blocks; 15% masking (80/10/10) in the collator
    examples.py        the .npy row format shared by sft and classification
    synthetic.py       the embedded story corpus (no network)
"""

IGNORE_INDEX = -100  # a label position that counts in no loss and no metric (prompts, padding, unmasked mlm)
