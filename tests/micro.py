"""The micro config that the command-line tests run: a 2-layer decoder on 300 synthetic stories, 16 steps."""

MICRO = """
run: {name: micro, seed: 1, max_duration: 16ba, eval_interval: 8ba, save_interval: 8ba, log_interval: 4ba,
      sample_tokens: 8, output_dir: runs}
optim: {lr: 3.0e-3, warmup: 2ba}
model: {config: pythia-14m, overrides: {n_layer: 2, n_embd: 64}}
data: {source: "synthetic:stories", max_documents: 300, tokenizer: {train: {vocab_size: 512}},
       block_size: 64, train_batch_size: 8, eval_batch_size: 8, eval_split: 0.05}
"""
