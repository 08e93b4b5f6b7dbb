# Sourced by the training scripts: flags for the recipe settings that are set in the environment.
# `recipe_overrides VAR:flag ...` appends `--flag "$VAR"` to the array `overrides` for every VAR that is set and
# not empty; unset variables leave the recipe's value (recipes/*.yaml) in force.
recipe_overrides() {
  overrides=()
  local pair var
  for pair in "$@"; do
    var=${pair%%:*}
    if [[ -n "${!var:-}" ]]; then overrides+=("--${pair#*:}" "${!var}"); fi
  done
}
