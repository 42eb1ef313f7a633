#!/usr/bin/env bash
# Download a GPT-2 checkpoint from Hugging Face into weights/<name>/.
#
#   scripts/fetch-weights.sh [options] [MODEL]        (make weights MODEL=...)
#
# MODEL: gpt2 (default), gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or any
# Hugging Face repo id "owner/repo" (stored as weights/owner--repo/).
# Files: config.json, vocab.json, merges.txt, model.safetensors.  Downloads
# resume from <file>.part; a file is renamed into place only once verified.
#
# Options:
#   -o, --dest DIR     put the files in DIR instead of weights/<name>/
#   -r, --revision REV branch, tag or commit (default main)
#   -f, --force        download again even if a file is already there
#   -n, --dry-run      print what would be fetched, fetch nothing
#   -h, --help
# Environment:
#   GPT2_HF_ENDPOINT   base URL (default $HF_ENDPOINT or https://huggingface.co)
#   GPT2_WEIGHTS_DIR   where weights/<name>/ live (default <repo>/weights)
#   HF_TOKEN           sent as a bearer token, for private or gated repos
#
# Exit status: 0 ok, 1 download or verification failed (or no network),
# 2 usage error.
set -euo pipefail

FILES=(config.json vocab.json merges.txt model.safetensors)
HEADER_LIMIT=100000000

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)

say() { printf '%s\n' "$*" >&2; }
die() { say "fetch-weights: $*"; exit 1; }
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

model=""
dest=""
revision=main
force=0
dry_run=0
while (($#)); do
    case "$1" in
        -o|--dest) (($# >= 2)) || { say "fetch-weights: $1 needs a directory"; usage 2; }
                   dest=$2; shift 2 ;;
        --dest=*) dest=${1#--dest=}; shift ;;
        -r|--revision) (($# >= 2)) || { say "fetch-weights: $1 needs a revision"; usage 2; }
                       revision=$2; shift 2 ;;
        --revision=*) revision=${1#--revision=}; shift ;;
        -f|--force) force=1; shift ;;
        -n|--dry-run) dry_run=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) say "fetch-weights: unknown option $1"; usage 2 ;;
        *) [[ -z $model ]] || { say "fetch-weights: only one MODEL, got '$model' and '$1'"; usage 2; }
           model=$1; shift ;;
    esac
done
if (($#)); then
    [[ -z $model && $# -eq 1 ]] || { say "fetch-weights: only one MODEL"; usage 2; }
    model=$1
fi
model=${model:-gpt2}

name_re='[A-Za-z0-9][A-Za-z0-9._-]*'
if [[ ! $model =~ ^$name_re(/$name_re)?$ || $model == *..* ]]; then
    say "fetch-weights: bad model name '$model' (expected e.g. gpt2, gpt2-xl or owner/repo)"
    usage 2
fi
if [[ ! $revision =~ ^[A-Za-z0-9._/-]+$ || $revision == *..* ]]; then
    say "fetch-weights: bad revision '$revision'"
    usage 2
fi

case "$model" in
    gpt2|gpt2-medium|gpt2-large|gpt2-xl) repo="openai-community/$model"; name=$model ;;
    distilgpt2) repo="distilbert/distilgpt2"; name=$model ;;
    */*) repo=$model; name=${model//\//--} ;;
    *) repo=$model; name=$model ;;
esac

endpoint=${GPT2_HF_ENDPOINT:-${HF_ENDPOINT:-https://huggingface.co}}
endpoint=${endpoint%/}
host=${endpoint#*://}
host=${host%%/*}
weights_root=${GPT2_WEIGHTS_DIR:-$repo_root/weights}
dest=${dest:-$weights_root/$name}
dest=${dest%/}
# How to name the destination in messages: relative to the repo when inside it.
case "$dest" in
    "$repo_root"/*) shown=${dest#"$repo_root"/}/ ;;
    *) shown=$dest/ ;;
esac

url_of() { printf '%s/%s/resolve/%s/%s' "$endpoint" "$repo" "$revision" "$1"; }

if ((dry_run)); then
    printf 'repo %s\nrevision %s\ndest %s\n' "$repo" "$revision" "$shown"
    for f in "${FILES[@]}"; do printf 'url %s\n' "$(url_of "$f")"; done
    exit 0
fi

command -v curl >/dev/null || die "curl is needed (apt-get install curl)"

no_network() {
    say "no network: cannot reach $host; copy a checkpoint into $shown by hand (see weights/README)"
    exit 1
}

file_size() { wc -c <"$1" | tr -d ' '; }

sha256_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        return 1
    fi
}

# header NAME FILE BLOCK: value of header NAME (case-insensitive) in response
# block BLOCK (1 = first response, "last" = final one) of a curl -D dump.
header() {
    awk -v want="$1" -v block="$3" '
        BEGIN { want = tolower(want) }
        { sub(/\r$/, "") }
        /^HTTP\// { n++; if (block == "last") val = ""; next }
        (block == "last" || n == block + 0) {
            i = index($0, ":"); if (i == 0) next
            k = tolower(substr($0, 1, i - 1))
            if (k == want) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v); val = v }
        }
        END { print val }' "$2"
}
header_any() {  # first non-empty value of NAME in any block
    awk -v want="$1" '
        BEGIN { want = tolower(want) }
        { sub(/\r$/, "") }
        { i = index($0, ":"); if (i == 0) next
          k = tolower(substr($0, 1, i - 1))
          if (k == want && val == "") { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v); val = v } }
        END { print val }' "$2"
}
strip_etag() {  # W/"abc" -> abc
    local e=${1#W/}
    e=${e#\"}
    e=${e%\"}
    printf '%s' "$e" | tr 'A-F' 'a-f'
}

curl_opts=(--fail --location --connect-timeout 20)
if [[ -n ${HF_TOKEN:-} ]]; then
    curl_opts+=(--header "Authorization: Bearer $HF_TOKEN")
fi
curl_err=""
created_dest=0
cleanup() {
    [[ -z $curl_err ]] || rm -f "$curl_err"
    # Leave no empty weights/<name>/ behind when nothing arrived.
    ((created_dest == 0)) || rmdir "$dest" 2>/dev/null || true
}
trap cleanup EXIT

# download FILE: fetch into $dest/FILE.part, verify, rename.  The weights
# get a progress bar and retries; the small files are fetched quietly, with
# curl's own error kept for the message (so "no network" is one clean line).
download() {
    local f=$1 url part hdr rc=0 code attempt resume
    local -a mode
    if [[ $f == model.safetensors ]]; then
        mode=(--progress-bar --retry 3 --retry-delay 3)
    else
        mode=(--silent --show-error)
    fi
    url=$(url_of "$f")
    part="$dest/$f.part"
    hdr="$dest/.$f.headers"
    for attempt in 1 2; do
        resume=()
        [[ -s $part ]] && resume=(-C -)
        if [[ $f == model.safetensors ]]; then
            say "fetching $url${resume:+ (resuming at $(file_size "$part") bytes)}"
        fi
        rc=0
        : >"$curl_err"
        if [[ $f == model.safetensors ]]; then
            code=$(curl "${curl_opts[@]}" "${mode[@]}" "${resume[@]}" -D "$hdr" -w '%{http_code}' \
                        -o "$part" "$url") || rc=$?
        else
            code=$(curl "${curl_opts[@]}" "${mode[@]}" "${resume[@]}" -D "$hdr" -w '%{http_code}' \
                        -o "$part" "$url" 2>"$curl_err") || rc=$?
        fi
        case $rc in
            0) break ;;
            5|6|7|28) rm -f "$hdr"; [[ -s $part ]] || rm -f "$part"; no_network ;;
            22|33|36)
                # A stale or complete .part the server will not resume: start over once.
                if ((attempt == 1)) && ((${#resume[@]})); then
                    say "fetch-weights: cannot resume $f (curl exit $rc), starting over"
                    rm -f "$part"
                    continue
                fi ;;
        esac
        rm -f "$hdr"
        if [[ $rc == 22 ]]; then
            [[ -s $part ]] || rm -f "$part"
            case $code in
                401|403) die "$f: HTTP $code from $url (private or gated repo? set HF_TOKEN)" ;;
                404) die "$f: HTTP 404 from $url (no such repo, revision or file in $repo)" ;;
                *) die "$f: HTTP $code from $url" ;;
            esac
        fi
        [[ -s $curl_err ]] && say "$(tail -n 1 "$curl_err")"
        die "$f: download failed (curl exit $rc) from $url; rerun to resume"
    done

    # --- verify what the server told us
    local size status expect="" linked cr etag sha
    size=$(file_size "$part")
    status=$(awk '{ sub(/\r$/, "") } /^HTTP\// { s = $2 } END { print s }' "$hdr")
    linked=$(header_any x-linked-size "$hdr")
    if [[ $status == 206 ]]; then
        cr=$(header content-range "$hdr" last)  # bytes a-b/total
        [[ $cr == */* ]] && expect=${cr##*/}
    else
        expect=$(header content-length "$hdr" last)
    fi
    for want in "$linked" "$expect"; do
        if [[ $want =~ ^[0-9]+$ ]] && [[ $want != "$size" ]]; then
            rm -f "$hdr"
            mv -f "$part" "$part.bad"
            die "$f: size mismatch: got $size bytes, server said $want (kept as $part.bad)"
        fi
    done
    etag=$(header_any x-linked-etag "$hdr")
    [[ -n $etag ]] || etag=$(header etag "$hdr" 1)
    etag=$(strip_etag "$etag")
    rm -f "$hdr"
    if [[ $etag =~ ^[0-9a-f]{64}$ ]]; then
        if sha=$(sha256_of "$part"); then
            if [[ $sha != "$etag" ]]; then
                mv -f "$part" "$part.bad"
                die "$f: sha256 mismatch: got $sha, server said $etag (kept as $part.bad)"
            fi
            say "$f: sha256 ok"
        else
            say "$f: no sha256sum or shasum here, sha256 not checked"
        fi
    fi
    mv -f "$part" "$dest/$f"
}

# --- local checks, run on every file whether just fetched or already there
check_config() {
    local f="$dest/config.json" out
    if command -v python3 >/dev/null; then
        out=$(python3 - "$f" <<'EOF' 2>&1
import json, sys
try:
    with open(sys.argv[1], encoding="utf-8") as fh:
        cfg = json.load(fh)
except ValueError as e:
    sys.exit(f"not valid JSON ({e})")
if not isinstance(cfg, dict):
    sys.exit("not a JSON object")
mt = cfg.get("model_type")
if mt != "gpt2":
    sys.exit(f"model_type is {mt!r}, not 'gpt2'")
for k in ("n_layer", "n_embd", "n_head", "vocab_size"):
    if k in cfg and not (isinstance(cfg[k], int) and cfg[k] > 0):
        sys.exit(f"{k} is {cfg[k]!r}")
print(f"n_layer {cfg.get('n_layer')}, n_embd {cfg.get('n_embd')}, n_head {cfg.get('n_head')}, "
      f"vocab_size {cfg.get('vocab_size')}")
EOF
        ) || die "config.json: $out"
        say "config.json: ok ($out)"
    else
        grep -Eq '"model_type"[[:space:]]*:[[:space:]]*"gpt2"' "$f" \
            || die "config.json: no \"model_type\": \"gpt2\" in $f"
        say "config.json: ok (model_type gpt2)"
    fi
}

check_safetensors() {
    local f="$dest/model.safetensors" size b n i first
    size=$(file_size "$f")
    ((size >= 8)) || die "model.safetensors: only $size bytes"
    read -r -a b <<<"$(od -An -v -tu1 -N8 "$f" | tr '\n' ' ')"
    ((${#b[@]} == 8)) || die "model.safetensors: cannot read the header length"
    for i in 4 5 6 7; do
        ((b[i] == 0)) || die "model.safetensors: header length is absurd (over 4 GB)"
    done
    n=$((b[0] + b[1] * 256 + b[2] * 65536 + b[3] * 16777216))
    ((n >= 2 && n <= HEADER_LIMIT)) || die "model.safetensors: header length $n is not sane"
    ((8 + n <= size)) || die "model.safetensors: header length $n runs past the end of the file ($size bytes)"
    first=$(od -An -c -j8 -N1 "$f" | tr -d ' ')
    [[ $first == "{" ]] || die "model.safetensors: header does not start with '{'"
    say "model.safetensors: ok ($size bytes, header $n bytes)"
}

check_nonempty() {
    [[ -s "$dest/$1" ]] || die "$1: empty"
}

[[ -d $dest ]] || created_dest=1
mkdir -p "$dest"
curl_err=$(mktemp "${TMPDIR:-/tmp}/fetch-weights.XXXXXX")
for f in "${FILES[@]}"; do
    if [[ -s $dest/$f ]] && ((!force)); then
        say "$f: already present, not downloading (use --force to fetch again)"
    else
        download "$f"
    fi
    case $f in
        config.json) check_config
                     say "model $repo (revision $revision) -> $shown" ;;
        model.safetensors) check_safetensors ;;
        *) check_nonempty "$f" ;;
    esac
done
say "done: $shown ($(du -sh "$dest" 2>/dev/null | cut -f1))"
