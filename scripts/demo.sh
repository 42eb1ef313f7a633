#!/usr/bin/env bash
# demo.sh - complete a sample text with the best model present: the largest
# checkpoint under weights/, else a small random one generated on the spot
# (its suggestions are random words: say so).
set -euo pipefail
cd "$(dirname "$0")/.."

model=""
for name in gpt2-xl gpt2-large gpt2-medium gpt2 distilgpt2; do
    if [ -f "weights/$name/model.safetensors" ]; then model="weights/$name"; break; fi
done
if [ -z "$model" ]; then
    model=build/demo-model
    if [ ! -f "$model/model.safetensors" ]; then
        /usr/bin/python3 tests/tools/checkpoint.py --out "$model" --layers 2 --embd 64 \
            --heads 4 --positions 256 --seed 7 --tokenizer-copy -q
    fi
    echo "No downloaded weights (run 'make weights' for real ones): using a small RANDOM" >&2
    echo "checkpoint, so the suggestions below are random words." >&2
fi

prompt='The best thing about writing code in Neovim is'
echo "model:  $model" >&2
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
