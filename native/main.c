/* main.c - the `gpt2` command: argument parsing and the subcommands.
 *
 *   gpt2 tokenize --model DIR            stdin text -> JSON array of ids
 *   gpt2 detokenize --model DIR --tokens IDS   -> JSON string
 *   gpt2 logits   --model DIR --tokens IDS     -> JSON array (last position)
 *   gpt2 complete --model DIR (--prompt TEXT | --tokens IDS) [...] -> JSON object
 *   gpt2 info     --model DIR            -> JSON object (config, sizes)
 *   gpt2 serve    --model DIR [--model DIR2 ...]   msgpack-RPC on stdin/stdout
 *
 * Results go to stdout as one JSON value; errors are one line on stderr
 * ("gpt2: ...") with exit status 1 (2 for usage errors).
 */
#define _GNU_SOURCE
#include "common.h"
#include "generate.h"
#include "log.h"
#include "model.h"
#include "server.h"
#include "msgguard.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define EXIT_USAGE 2
#define MAX_PROMPT_BYTES (64u << 20)

typedef struct {
    const char *model, *prompt, *tokens;
    gen_params gen;
    int seed_given, threads, all;
    const char *out;
    device_opts dev;
} cli_opts;

static const char *const USAGE =
    "usage: gpt2 COMMAND --model DIR [options]\n"
    "\n"
    "GPT-2 inference for gpt2.nvim. A model DIR is a Hugging Face checkpoint:\n"
    "config.json, model.safetensors, vocab.json, merges.txt.\n"
    "\n"
    "commands:\n"
    "  tokenize     read UTF-8 text on stdin, print its token ids as a JSON array\n"
    "  detokenize   print the text of --tokens as a JSON string\n"
    "  logits       print the last position's logits of --tokens as a JSON array\n"
    "  complete     print n continuations of --prompt or --tokens as a JSON object\n"
    "  info         print the model's configuration as a JSON object\n"
    "  serve        the resident helper: msgpack-RPC on stdin/stdout (for Neovim)\n"
    "  version      print the version\n"
    "\n"
    "Run `gpt2 COMMAND --help` for a command's options.\n";

#define DEVICE_HELP \
    "  --device D         auto | cpu | cuda (default auto: the GPU when usable)\n" \
    "  --gpu-dtype T      fp16 | bf16: weights and GEMM inputs on the GPU (default\n" \
    "                     fp16: 3 more significant bits than bf16, same speed)\n" \
    "  --gpu-mem-mb N     cap the GPU memory the helper allocates\n" \
    "  --cpu-dtype T      fp32 | bf16 | int8 | int4: matrices the CPU path streams\n" \
    "                     (default fp32)\n" \
    "  --cpu-kv T         auto | fp32 | fp16 | int8: keys and values the CPU path keeps\n" \
    "                     (int8: one scale per position and head; default auto: int8\n" \
    "                     with int8 weights where AVX-512 or AVX2 reads it in place,\n" \
    "                     else fp16 with bf16 or int8 where the CPU converts it in\n" \
    "                     hardware, else fp32)\n"

static const char *const COMPLETE_HELP =
    "usage: gpt2 complete --model DIR (--prompt TEXT | --tokens IDS) [options]\n"
    "\n"
    "  -n N               continuations (default 3, 1..16)\n"
    "  --max-tokens N     new tokens per continuation (default 24, 1..1024)\n"
    "  --temperature T    0 = greedy (default 0.8, 0..10)\n"
    "  --top-k K          keep the K most likely tokens, 0 = all (default 40)\n"
    "  --top-p P          nucleus mass in (0, 1] (default 0.95)\n"
    "  --seed S           0..2^53-1; the same seed and input give the same output\n"
    "                     (default: random, reported in the output)\n"
    "  --stop MODE        line | sentence | none (default line: stop at the end of\n"
    "                     the line, after some text)\n"
    "  --threads N        CPU threads (default: one per CPU this process may run on)\n"
    DEVICE_HELP
    "\n"
    "A prompt longer than the window (n_positions - max-tokens) keeps its last\n"
    "tokens; `truncated` in the output says how many were dropped. An empty\n"
    "prompt starts from <|endoftext|>.\n"
    "Output: {suggestions, tokens, finish, prompt_tokens, truncated, seed,\n"
    "         model, device, timings{load_ms, tokenize_ms, prefill_ms, decode_ms,\n"
    "         total_ms}}\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "gpt2: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (try --help)\n");
    return EXIT_USAGE;
}

static int fail(const char *err)
{
    fprintf(stderr, "gpt2: %s\n", err);
    return 1;
}

/* ==== Parsing numbers and lists ==== */

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double lo, double hi, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = (float)v;
    return 0;
}

/* "1,2,3" -> ids (caller frees). -1 on a malformed list. */
static int parse_ids(const char *s, int **ids, int *n)
{
    int cap = 16, k = 0;
    int *v = malloc(cap * sizeof *v);
    if (!v) return -1;
    for (const char *p = s; *p;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT_MAX || (*end && *end != ',')) goto bad;
        if (k == cap) {
            int *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) goto bad;
            v = nv;
        }
        v[k++] = (int)x;
        p = *end ? end + 1 : end;
        if (*end && !*p) goto bad; /* trailing comma */
    }
    *ids = v;
    *n = k;
    return 0;
bad:
    free(v);
    return -1;
}

/* --device (which 0), --gpu-dtype (1), --gpu-mem-mb (2), --cpu-dtype (3),
 * --cpu-kv (4) into d. */
static int device_option(int which, const char *arg, device_opts *d)
{
    long v;
    if (which == 0) {
        if ((v = device_parse(arg)) < 0)
            return usage_error("--device must be auto, cpu or cuda, not '%s'", arg);
        d->choice = (device_choice)v;
    } else if (which == 1) {
        if (strcmp(arg, "bf16") && strcmp(arg, "fp16"))
            return usage_error("--gpu-dtype must be bf16 or fp16, not '%s'", arg);
        d->half = !strcmp(arg, "fp16");
    } else if (which == 2) {
        if (parse_long(arg, 1, 1L << 24, &v))
            return usage_error("--gpu-mem-mb must be a positive number of MiB, not '%s'", arg);
        d->gpu_mem_cap = (size_t)v << 20;
    } else if (which == 4) {
        if (strcmp(arg, "auto") && strcmp(arg, "fp32") && strcmp(arg, "fp16") && strcmp(arg, "int8"))
            return usage_error("--cpu-kv must be auto, fp32, fp16 or int8, not '%s'", arg);
        d->cpu_kv = !strcmp(arg, "fp32")   ? FWD_KV_FP32
                    : !strcmp(arg, "fp16") ? FWD_KV_FP16
                    : !strcmp(arg, "int8") ? FWD_KV_INT8
                                           : FWD_KV_AUTO;
    } else {
        if ((d->cpu_fmt = fwd_fmt_parse(arg)) < 0)
            return usage_error("--cpu-dtype must be fp32, bf16, int8 or int4, not '%s'", arg);
    }
    return 0;
}

static int parse_opts(int argc, char **argv, cli_opts *o, const char *help)
{
    enum { O_MAXTOK = 256, O_TEMP, O_TOPK, O_TOPP, O_SEED, O_STOP, O_THREADS, O_DEVICE,
           O_GPUDT, O_GPUMEM, O_CPUDT, O_CPUKV, O_ALL, O_OUT };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"tokens", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {"max-tokens", required_argument, 0, O_MAXTOK},
        {"temperature", required_argument, 0, O_TEMP}, {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"seed", required_argument, 0, O_SEED},
        {"stop", required_argument, 0, O_STOP}, {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE}, {"gpu-dtype", required_argument, 0, O_GPUDT},
        {"gpu-mem-mb", required_argument, 0, O_GPUMEM}, {"cpu-dtype", required_argument, 0, O_CPUDT},
        {"cpu-kv", required_argument, 0, O_CPUKV},
        {"all", no_argument, 0, O_ALL},
        {"out", required_argument, 0, O_OUT}, {0, 0, 0, 0}};
    long v;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:p:t:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 't': o->tokens = optarg; break;
        case 'h': fputs(help, stdout); exit(0);
        case 'n':
            if (parse_long(optarg, 1, GEN_MAX_N, &v)) return usage_error("-n must be 1..16, not '%s'", optarg);
            o->gen.n = (int)v;
            break;
        case O_MAXTOK:
            if (parse_long(optarg, 1, GEN_MAX_TOKENS, &v))
                return usage_error("--max-tokens must be 1..1024, not '%s'", optarg);
            o->gen.max_tokens = (int)v;
            break;
        case O_TEMP:
            if (parse_float(optarg, 0, 10, &o->gen.sp.temperature))
                return usage_error("--temperature must be 0..10, not '%s'", optarg);
            break;
        case O_TOPK:
            if (parse_long(optarg, 0, INT_MAX, &v))
                return usage_error("--top-k must be a whole number >= 0, not '%s'", optarg);
            o->gen.sp.top_k = (int)v;
            break;
        case O_TOPP:
            if (parse_float(optarg, 1e-6, 1, &o->gen.sp.top_p))
                return usage_error("--top-p must be in (0, 1], not '%s'", optarg);
            break;
        case O_SEED:
            if (parse_long(optarg, 0, (1L << 53) - 1, &v))
                return usage_error("--seed must be 0..2^53-1, not '%s'", optarg);
            o->gen.seed = (uint64_t)v;
            o->seed_given = 1;
            break;
        case O_STOP:
            if ((v = stop_parse(optarg)) < 0)
                return usage_error("--stop must be line, sentence or none, not '%s'", optarg);
            o->gen.stop = (stop_mode)v;
            break;
        case O_THREADS:
            if (parse_long(optarg, 1, 256, &v))
                return usage_error("--threads must be 1..256, not '%s'", optarg);
            o->threads = (int)v;
            break;
        case O_DEVICE: case O_GPUDT: case O_GPUMEM: case O_CPUDT: case O_CPUKV:
            if ((v = device_option(c - O_DEVICE, optarg, &o->dev))) return (int)v;
            break;
        case O_ALL: o->all = 1; break;
        case O_OUT: o->out = optarg; break;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->model) return usage_error("%s", "--model DIR is required");
    return 0;
}

/* ==== Output ==== */

/* Print a cJSON value (consumed) on one line of stdout. */
static int print_json(cJSON *v)
{
    char *s = v ? cJSON_PrintUnformatted(v) : NULL;
    cJSON_Delete(v);
    if (!s) return fail("out of memory printing the result");
    int ok = puts(s) >= 0 && fflush(stdout) == 0;
    cJSON_free(s);
    return ok ? 0 : fail("cannot write to stdout");
}

static cJSON *int_array(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

/* ==== Commands ==== */

static char *read_stdin(size_t *len, char *err)
{
    buf_t b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
        if (b.len + got > MAX_PROMPT_BYTES || buf_append(&b, chunk, got) < 0) {
            buf_free(&b);
            errf(err, "stdin: more than %u bytes of text", MAX_PROMPT_BYTES);
            return NULL;
        }
    }
    *len = b.len;
    return b.p ? b.p : strdup("");
}

static int cmd_tokenize(cli_opts *o, model *m)
{
    char err[ERR_MAX];
    size_t len;
    char *text = read_stdin(&len, err);
    if (!text) return fail(err);
    int *ids = NULL, n = 0, cap = 0;
    int rc = tok_encode(m->tok, text, len, &ids, &n, &cap, err);
    free(text);
    (void)o;
    if (rc < 0) return fail(err);
    rc = print_json(int_array(ids, n));
    free(ids);
    return rc;
}

/* --tokens parsed and checked against the vocabulary. */
static int get_tokens(const cli_opts *o, const model *m, int **ids, int *n)
{
    if (!o->tokens) return usage_error("%s", "--tokens IDS is required");
    if (parse_ids(o->tokens, ids, n) < 0)
        return usage_error("--tokens must be comma-separated ids, not '%s'", o->tokens);
    for (int i = 0; i < *n; i++)
        if ((*ids)[i] >= m->cfg.n_vocab) {
            fprintf(stderr, "gpt2: token id %d is outside the vocabulary (0..%d)\n", (*ids)[i],
                    m->cfg.n_vocab - 1);
            free(*ids);
            return 1;
        }
    return 0;
}

static int cmd_detokenize(cli_opts *o, model *m)
{
    int *ids, n, rc = get_tokens(o, m, &ids, &n);
    if (rc) return rc;
    buf_t out = {0};
    if (tok_decode(m->tok, ids, n, 1, &out) < 0 || buf_append(&out, "", 1) < 0) rc = -1;
    free(ids);
    rc = rc ? fail("out of memory") : print_json(cJSON_CreateString(out.p));
    buf_free(&out);
    return rc;
}

/* Logits as raw little-endian float32 (rows, vocab) in o->out. */
static int write_raw(const char *path, const float *v, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(v, sizeof *v, n, f) != n) {
        if (f) fclose(f);
        fprintf(stderr, "gpt2: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (fclose(f)) {
        fprintf(stderr, "gpt2: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static cJSON *float_rows(const float *v, int rows, int V, int nested)
{
    cJSON *a = cJSON_CreateArray();
    for (int r = 0; a && r < rows; r++) {
        cJSON *row = nested ? cJSON_CreateArray() : a;
        for (int i = 0; row && i < V; i++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber(v[(size_t)r * V + i]));
        if (nested) cJSON_AddItemToArray(a, row);
    }
    return a;
}

static int cmd_logits(cli_opts *o, model *m)
{
    char err[ERR_MAX];
    int *ids, n, rc = get_tokens(o, m, &ids, &n);
    if (rc) return rc;
    if (n == 0 || n > m->cfg.n_ctx) {
        free(ids);
        fprintf(stderr, "gpt2: need 1..%d tokens (the model's window), got %d\n", m->cfg.n_ctx, n);
        return 1;
    }
    int rows = o->all ? n : 1, V = m->cfg.n_vocab;
    engine *e = engine_new(m, o->threads, &o->dev, err);
    float *logits = xmallocarray((size_t)rows * V, sizeof(float));
    if (!e || !logits || gen_logits(e, ids, n, o->all, logits, err) < 0) {
        rc = fail(e && !logits ? "out of memory" : err);
    } else if (o->out) {
        rc = write_raw(o->out, logits, (size_t)rows * V);
        if (rc == 0) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddNumberToObject(j, "rows", rows);
            cJSON_AddNumberToObject(j, "vocab", V);
            cJSON_AddStringToObject(j, "file", o->out);
            cJSON_AddStringToObject(j, "device", device_name(e->dev));
            rc = print_json(j);
        }
    } else {
        rc = print_json(float_rows(logits, rows, V, o->all));
    }
    free(logits);
    free(ids);
    engine_free(e);
    return rc;
}

/* The prompt's ids: --tokens, or --prompt tokenized; at most `keep` of the
 * last ones; an empty prompt becomes <|endoftext|>. */
static int prompt_ids(const cli_opts *o, model *m, int keep, int **ids, int *n, int *dropped,
                      char *err)
{
    int cap = 0;
    *ids = NULL;
    *n = 0;
    if (o->tokens) {
        int rc = get_tokens(o, m, ids, n);
        if (rc) return rc;
    } else if (tok_encode(m->tok, o->prompt, strlen(o->prompt), ids, n, &cap, err) < 0) {
        return fail(err);
    }
    *dropped = *n > keep ? *n - keep : 0;
    if (*dropped) memmove(*ids, *ids + *dropped, (size_t)keep * sizeof **ids);
    *n -= *dropped;
    if (*n == 0) {
        if (m->cfg.eos < 0) return fail("empty prompt and the model has no end-of-text token");
        int *p = realloc(*ids, sizeof **ids);
        if (!p) return fail("out of memory");
        *ids = p;
        (*ids)[(*n)++] = m->cfg.eos;
    }
    return 0;
}

static cJSON *complete_json(const model *m, const engine *e, const gen_result *r,
                            const cli_opts *o, int dropped, double load_ms, double tok_ms,
                            double t_start)
{
    cJSON *j = cJSON_CreateObject(), *sug = cJSON_AddArrayToObject(j, "suggestions");
    cJSON *toks = cJSON_AddArrayToObject(j, "tokens"), *fin = cJSON_AddArrayToObject(j, "finish");
    for (int i = 0; i < r->n; i++) {
        cJSON_AddItemToArray(sug, cJSON_CreateString(r->text[i]));
        cJSON_AddItemToArray(toks, int_array(r->ids[i], r->n_ids[i]));
        cJSON_AddItemToArray(fin, cJSON_CreateString(gen_finish_name(r->finish[i])));
    }
    cJSON_AddNumberToObject(j, "prompt_tokens", r->prompt_tokens);
    cJSON_AddNumberToObject(j, "truncated", dropped);
    cJSON_AddNumberToObject(j, "seed", (double)o->gen.seed);
    cJSON_AddStringToObject(j, "stop", stop_name(o->gen.stop));
    cJSON_AddStringToObject(j, "model", m->name);
    cJSON_AddStringToObject(j, "device", device_name(e->dev));
    if (*device_note(e->dev)) cJSON_AddStringToObject(j, "device_note", device_note(e->dev));
    if (*device_cpu_kernels(e->dev)) cJSON_AddStringToObject(j, "cpu_kernels", device_cpu_kernels(e->dev));
    if (*device_cpu_kv(e->dev)) cJSON_AddStringToObject(j, "cpu_kv", device_cpu_kv(e->dev));
    cJSON *t = cJSON_AddObjectToObject(j, "timings");
    cJSON_AddNumberToObject(t, "load_ms", load_ms);
    cJSON_AddNumberToObject(t, "tokenize_ms", tok_ms);
    cJSON_AddNumberToObject(t, "prefill_ms", r->prefill_ms);
    cJSON_AddNumberToObject(t, "decode_ms", r->decode_ms);
    cJSON_AddNumberToObject(t, "decode_steps", r->steps);
    cJSON_AddNumberToObject(t, "total_ms", now_ms() - t_start);
    return j;
}

static int cmd_complete(cli_opts *o, model *m, double load_ms, double t_start)
{
    char err[ERR_MAX];
    if (!!o->prompt == !!o->tokens)
        return usage_error("%s", "give exactly one of --prompt TEXT and --tokens IDS");
    if (o->gen.max_tokens >= m->cfg.n_ctx) {
        fprintf(stderr, "gpt2: --max-tokens must be below the model's window of %d\n",
                m->cfg.n_ctx);
        return 1;
    }
    if (!o->seed_given) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, 0) != sizeof s) s = (uint64_t)(now_ms() * 1000);
        o->gen.seed = s & ((1ULL << 53) - 1);
    }
    double t0 = now_ms();
    int *ids, n, dropped, rc = prompt_ids(o, m, m->cfg.n_ctx - o->gen.max_tokens, &ids, &n,
                                          &dropped, err);
    if (rc) return rc;
    double tok_ms = now_ms() - t0;
    engine *e = engine_new(m, o->threads, &o->dev, err);
    gen_result r;
    if (!e || gen_complete(e, ids, n, &o->gen, &r, err) < 0) {
        rc = fail(err);
    } else {
        rc = print_json(complete_json(m, e, &r, o, dropped, load_ms, tok_ms, t_start));
        gen_result_free(&r);
    }
    engine_free(e);
    free(ids);
    return rc;
}

static int cmd_info(model *m)
{
    const model_cfg *c = &m->cfg;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", m->name);
    cJSON_AddStringToObject(j, "dir", m->dir);
    cJSON_AddNumberToObject(j, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(j, "n_embd", c->n_embd);
    cJSON_AddNumberToObject(j, "n_head", c->n_head);
    cJSON_AddNumberToObject(j, "n_positions", c->n_ctx);
    cJSON_AddNumberToObject(j, "vocab_size", c->n_vocab);
    cJSON_AddNumberToObject(j, "n_inner", c->n_inner);
    cJSON_AddNumberToObject(j, "tokenizer_size", tok_vocab_size(m->tok));
    cJSON_AddNumberToObject(j, "weight_bytes", (double)m->weight_bytes);
    return print_json(j);
}

static const char *const SERVE_HELP =
    "usage: gpt2 serve --model DIR [--model DIR2 ...] [options]\n"
    "\n"
    "msgpack-RPC on stdin/stdout: complete, cancel, status, ping, shutdown.\n"
    "Models load on first use; the first --model is the default.\n"
    "\n"
    "  --threads N          compute threads (default: one per CPU the helper may run on)\n"
    "  --queue N            pending requests before 'busy' (default 8)\n"
    "  --cache-slots N      per-buffer prefix caches kept (default 4)\n"
    "  --lru N              identical-request answers kept (default 32)\n"
    "  --max-message BYTES  largest accepted message (default 16 MiB)\n"
    "  --max-depth N        deepest accepted nesting (default 16)\n"
    "  --lua-handler EXPR   Lua run by nvim_exec_lua for Neovim-mode events\n"
    "                       (default: require('gpt2.client')._on_event(...))\n"
    "  --log-level L        error | warn | info | debug (default info)\n"
    "  --log-file PATH      also append the log to PATH\n"
    DEVICE_HELP;

static int opt_int(const char *name, const char *v, long lo, long hi, long *out)
{
    if (parse_long(v, lo, hi, out) == 0) return 0;
    fprintf(stderr, "gpt2: %s must be %ld..%ld, not '%s' (try --help)\n", name, lo, hi, v);
    return EXIT_USAGE;
}

static int cmd_serve(int argc, char **argv)
{
    enum { O_THREADS = 300, O_QUEUE, O_SLOTS, O_LRU, O_MAXMSG, O_DEPTH, O_LUA, O_LEVEL, O_LOGF,
           O_DEVICE, O_GPUDT, O_GPUMEM, O_CPUDT, O_CPUKV };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'},
        {"threads", required_argument, 0, O_THREADS}, {"queue", required_argument, 0, O_QUEUE},
        {"cache-slots", required_argument, 0, O_SLOTS}, {"lru", required_argument, 0, O_LRU},
        {"max-message", required_argument, 0, O_MAXMSG},
        {"max-depth", required_argument, 0, O_DEPTH}, {"lua-handler", required_argument, 0, O_LUA},
        {"log-level", required_argument, 0, O_LEVEL}, {"log-file", required_argument, 0, O_LOGF},
        {"device", required_argument, 0, O_DEVICE}, {"gpu-dtype", required_argument, 0, O_GPUDT},
        {"gpu-mem-mb", required_argument, 0, O_GPUMEM}, {"cpu-dtype", required_argument, 0, O_CPUDT},
        {"cpu-kv", required_argument, 0, O_CPUKV},
        {0, 0, 0, 0}};
    const char *models[64], *log_file = NULL;
    server_opts o = {.model_dirs = models, .queue_cap = 8, .cache_slots = 4, .lru_size = 32,
                     .device = {.half = 1},
                     .max_depth = 16, .max_message = 16u << 20,
                     .lua_handler = "require('gpt2.client')._on_event(...)"};
    int level = LOG_INFO, c, rc = 0;
    long v;
    opterr = 0;
    optind = 1;
    while (rc == 0 && (c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (o.n_models == 64) return usage_error("%s", "at most 64 --model");
            models[o.n_models++] = optarg;
            break;
        case 'h': fputs(SERVE_HELP, stdout); return 0;
        case O_THREADS: rc = opt_int("--threads", optarg, 1, 256, &v); o.threads = (int)v; break;
        case O_QUEUE: rc = opt_int("--queue", optarg, 1, 1024, &v); o.queue_cap = (int)v; break;
        case O_SLOTS: rc = opt_int("--cache-slots", optarg, 0, 64, &v); o.cache_slots = (int)v; break;
        case O_LRU: rc = opt_int("--lru", optarg, 0, 4096, &v); o.lru_size = (int)v; break;
        case O_MAXMSG:
            rc = opt_int("--max-message", optarg, 64, 1L << 30, &v);
            o.max_message = (size_t)v;
            break;
        case O_DEPTH: rc = opt_int("--max-depth", optarg, 2, MG_MAX_DEPTH_LIMIT, &v); o.max_depth = (int)v; break;
        case O_LUA: o.lua_handler = optarg; break;
        case O_LEVEL:
            if ((level = log_parse_level(optarg)) < 0)
                return usage_error("--log-level must be error, warn, info or debug, not '%s'", optarg);
            break;
        case O_LOGF: log_file = optarg; break;
        case O_DEVICE: case O_GPUDT: case O_GPUMEM: case O_CPUDT: case O_CPUKV:
            rc = device_option(c - O_DEVICE, optarg, &o.device);
            break;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (rc) return rc;
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.n_models) return usage_error("%s", "--model DIR is required");
    if (log_init((log_level)level, log_file) < 0) {
        fprintf(stderr, "gpt2: cannot open log file %s: %s\n", log_file, strerror(errno));
        return 1;
    }
    rc = server_run(&o);
    log_close();
    return rc;
}

int main(int argc, char **argv)
{
    double t_start = now_ms();
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("gpt2 %s\n", GPT2_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    log_init(LOG_WARN, NULL); /* one-shot commands: the JSON says the rest */
    static const char *const cmds[] = {"tokenize", "detokenize", "logits", "complete", "info"};
    int k = 0;
    while (k < 5 && strcmp(cmd, cmds[k])) k++;
    if (k == 5) return usage_error("unknown command '%s'", cmd);
    char help[1024];
    snprintf(help, sizeof help, "usage: gpt2 %s --model DIR%s\n%s", cmd,
             k == 1 || k == 2 ? " --tokens IDS" : k == 0 ? "  < text" : "",
             k == 2 ? "\n  --all          logits of every position (a JSON array of rows)\n"
                      "  --out FILE     write them to FILE as raw float32 (rows x vocab) and\n"
                      "                 print {rows, vocab, file, device}\n"
                      "  --threads N    CPU threads\n" DEVICE_HELP : "");
    cli_opts o = {.gen = {.n = 3, .max_tokens = 24, .sp = {0.8f, 40, 0.95f}, .stop = STOP_LINE},
                  .dev = {.half = 1}};
    int rc = parse_opts(argc - 1, argv + 1, &o, k == 3 ? COMPLETE_HELP : help);
    if (rc) return rc;
    char err[ERR_MAX];
    model *m = model_load(o.model, err);
    if (!m) return fail(err);
    double load_ms = now_ms() - t_start;
    switch (k) {
    case 0: rc = cmd_tokenize(&o, m); break;
    case 1: rc = cmd_detokenize(&o, m); break;
    case 2: rc = cmd_logits(&o, m); break;
    case 3: rc = cmd_complete(&o, m, load_ms, t_start); break;
    default: rc = cmd_info(m); break;
    }
    model_free(m);
    return rc;
}
