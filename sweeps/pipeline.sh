#!/usr/bin/env bash
# The three RLHF stages, each stage reading the previous stage's output folder (docs/offline.md):
#   1. objective=sft     supervised fine-tuning                      -> $OUT/1_sft/policy
#   2. objective=reward  Bradley-Terry reward model from the SFT policy -> $OUT/2_reward/reward_model
#   3. objective=ppo     PPO from the SFT policy on the learned reward  -> $OUT/3_ppo/policy
# Usage: sweeps/pipeline.sh [OUT] [overrides for every stage...], e.g.
#   sweeps/pipeline.sh outputs/pipeline logger=none
# Stage-specific overrides: SFT_ARGS, REWARD_ARGS, PPO_ARGS (environment variables).
set -euo pipefail
OUT=${1:-outputs/pipeline}
shift $(( $# > 0 ? 1 : 0 ))
PY=${PYTHON:-python}
$PY -m rlhf_exp objective=sft hydra.run.dir="$OUT/1_sft" ${SFT_ARGS:-} "$@"
$PY -m rlhf_exp objective=reward model.path="$OUT/1_sft/policy" hydra.run.dir="$OUT/2_reward" ${REWARD_ARGS:-} "$@"
$PY -m rlhf_exp objective=ppo model.path="$OUT/1_sft/policy" reward_model=learned \
    reward_model.path="$OUT/2_reward" hydra.run.dir="$OUT/3_ppo" ${PPO_ARGS:-} "$@"
