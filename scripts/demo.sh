#!/usr/bin/env bash
# demo.sh - `make demo`: open Neovim on a sample document with the plugin
# loaded, using the largest downloaded model (weights/), else a small random
# checkpoint generated on the spot (whose suggestions are random words: it
# says so). Without a terminal it completes the sample's first prompt with
# the CLI instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

model=""
for name in gpt2-xl gpt2-large gpt2-medium gpt2 distilgpt2; do
    if [ -f "weights/$name/model.safetensors" ]; then model="$root/weights/$name"; break; fi
done
if [ -z "$model" ]; then
    model=$root/build/demo-model
    if [ ! -f "$model/model.safetensors" ]; then
        /usr/bin/python3 tests/tools/checkpoint.py --out "$model" --layers 2 --embd 64 \
            --heads 4 --positions 256 --seed 7 --tokenizer-copy -q
    fi
    echo "No downloaded weights (run 'make weights' for real ones): using a small RANDOM" >&2
    echo "checkpoint, so the suggestions will be random words." >&2
fi
echo "model: $model" >&2

if [ -t 0 ] && [ -t 1 ]; then
    sleep 1
    exec nvim -u NONE -i NONE --cmd "set rtp^=$root" --cmd 'filetype plugin on' \
        -c 'runtime plugin/gpt2.lua' \
        -c "lua require('gpt2').setup({ model = '$model' })" \
        -c 'set laststatus=2 statusline=%f\ %=%{v:lua.require(\"gpt2\").statusline()}' \
        -c 'call cursor(8, 999)' "$root/scripts/demo-sample.md"
fi

prompt='The quick brown fox jumps over the lazy dog. Then it'
echo "(no terminal: completing with the CLI instead)" >&2
echo "prompt: $prompt" >&2
build/gpt2 complete --model "$model" --prompt "$prompt" -n 3 --max-tokens 24 --stop sentence |
    /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)
for i, s in enumerate(r["suggestions"], 1):
    print(f"  {i}. ...{s!r}")
t = r["timings"]
print("device %s: prefill %.1f ms, decode %.1f ms, total %.1f ms"
      % (r["device"], t["prefill_ms"], t["decode_ms"], t["total_ms"]))
'
