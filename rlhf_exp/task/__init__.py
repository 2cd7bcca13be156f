"""The embedded task: an offline miniature of "make GPT-2 write positive IMDb reviews".

* :mod:`rlhf_exp.task.reviews`: a deterministic review generator with known sentiment, its lexicon scorer
  (``score_text``), preference pairs, unpaired (KTO) examples and disjoint train/eval splits.
* :mod:`rlhf_exp.task.build`: ``python -m rlhf_exp.task.build`` rebuilds the shipped checkpoints in
  ``rlhf_exp/assets/tiny_reviews/`` (tokenizer, policy, reward) deterministically.
"""
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_reviews"
TOKENIZER_DIR, POLICY_DIR, REWARD_DIR = ASSET_DIR / "tokenizer", ASSET_DIR / "policy", ASSET_DIR / "reward"
