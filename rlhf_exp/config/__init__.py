"""The config: where it lives and its resolvers (:mod:`~rlhf_exp.config.paths`), the typed schema of every setting
(:mod:`~rlhf_exp.config.schema`), ``validate`` of a composed config (:mod:`~rlhf_exp.config.validation`),
``check_overrides`` of a command line (:mod:`~rlhf_exp.config.overrides`) and the reference docs/config.md
(:mod:`~rlhf_exp.config.docs`). The yaml files in ``conf/`` hold every default."""
from rlhf_exp.config.errors import ConfigError, closest
from rlhf_exp.config.paths import (ASSETS_DIR, CONFIG_DIR, config_groups, group_options, job_dirname, path_safe,
                                   resolve_asset)
from rlhf_exp.config.schema import GROUPS, OFFLINE, ONLINE, complete_reward, register_kind
from rlhf_exp.config.overrides import check_overrides
from rlhf_exp.config.validation import validate

__all__ = ["ASSETS_DIR", "CONFIG_DIR", "GROUPS", "OFFLINE", "ONLINE", "ConfigError", "check_overrides", "closest",
           "complete_reward", "config_groups", "group_options", "job_dirname", "path_safe", "register_kind",
           "resolve_asset", "validate"]
