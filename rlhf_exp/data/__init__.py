"""Datasets: prompts for the online objectives, and records for the offline ones (SFT, reward modelling, DPO, KTO).

Online: every source ends as two lists of :class:`Prompt` (train and a fixed, held-out eval set): token ids for the
policy, the decoded text for rewards and logs, and any extra dataset columns (passed on to reward functions).

Offline (:func:`load_offline_data`): the same sources give train and held-out lists of plain records in the format
the objective asks for (``OFFLINE_FORMATS``): ``sft`` {prompt, completion}, ``preference`` {prompt, chosen,
rejected[, margin]}, ``unpaired`` {prompt, completion, label}. ``dataset.columns`` maps these names to the
dataset's own columns.

Sources (``dataset.kind``):
* ``tiny_reviews``: the embedded review generator (no download).
* ``hf``: a Hugging Face dataset (``dataset.path``): a hub id (``dataset.config_name`` picks the hub config, and
  ``dataset.data_dir`` a sub-folder), a folder written by ``huggingface-cli download <id> --repo-type dataset
  --local-dir DIR`` (the repo's README ``configs:`` and data files), or a folder written by ``save_to_disk``.
* ``files``: local jsonl/json/csv/parquet files with a column mapping.

With ``eval_split: null`` the first ``eval_size`` (online) or ``offline_eval_size`` (offline) rows of the shuffled
train split are held out. Rows with a null cell in a column that is used are dropped (with a notice that counts
them). Data files that cannot be read (empty, malformed, not UTF-8) are an error naming the file and line.

With ``prompt_min_tokens``/``prompt_max_tokens`` set, each text is cut to a random number of leading tokens in that
range (the IMDb "review prefix" recipe); otherwise the whole column is the prompt, left-truncated to
``max_prompt_tokens``. With ``chat_template: true`` (instruct models) the cut text becomes the user's turn in the
tokenizer's chat template, ending with the opening of the assistant's turn; ``Prompt.text`` stays the plain text
(what rewards and logs see).

Conversational data (TRL's format: ``prompt``, ``completion``, ``chosen``, ``rejected`` or ``messages`` cells that
are lists of ``{"role", "content"}`` messages) is rendered with the policy tokenizer's chat template: an online
prompt becomes the conversation followed by the opening of the assistant's turn, an offline record becomes the
rendered prompt and the rendered assistant turns (:func:`render_conversations`); rewards see the rendered text. A
list- or dict-valued cell that is not a conversation is an error naming the column.
"""
from __future__ import annotations

from rlhf_exp.data.chat import (chat_prompt_text, chat_records, is_conversation, render_completion,
                                 render_conversations, render_turns)
from rlhf_exp.data.prompts import (SOURCES, PromptLimit, load_prompt_data, offline_eval_prompts,
                                    prompt_limit)
from rlhf_exp.data.records import (OFFLINE_FORMATS, OFFLINE_SOURCES, RECORD_FIELDS, common_prefix_messages,
                                   common_prefix_prompt, load_offline_data)
from rlhf_exp.data.sampler import PromptSampler
from rlhf_exp.data.sources import file_problem, load_splits
from rlhf_exp.data.types import DatasetError, OfflineData, Prompt, PromptData

__all__ = ["DatasetError", "OFFLINE_FORMATS", "OFFLINE_SOURCES", "OfflineData", "Prompt", "PromptData", "PromptSampler",
           "RECORD_FIELDS", "SOURCES", "chat_prompt_text", "chat_records", "common_prefix_messages",
           "common_prefix_prompt", "file_problem", "is_conversation", "load_offline_data", "load_prompt_data",
           "load_splits", "offline_eval_prompts", "PromptLimit", "prompt_limit", "render_completion",
           "render_conversations", "render_turns"]
