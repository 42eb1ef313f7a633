/* model.h - a GPT-2 checkpoint in Hugging Face layout, loaded and checked.
 *
 * A model directory holds config.json, model.safetensors, vocab.json and
 * merges.txt. Weights are validated against the config (every expected tensor
 * present, with its expected shape) and exposed as fp32 arrays: F32 tensors
 * point straight into the read-only mapping when aligned, F16/BF16 tensors
 * are converted once at load. HF's Conv1D weights keep their [in, out] layout.
 */
#ifndef GPT2_MODEL_H
#define GPT2_MODEL_H

#include "safetensors.h"
#include "tokenizer.h"

typedef enum { ACT_GELU_TANH, ACT_GELU_ERF, ACT_RELU, ACT_QUICK_GELU, ACT_SILU } act_kind;

typedef struct {
    int n_layer, n_embd, n_head, n_ctx, n_vocab, n_inner;
    float eps;
    act_kind act;
    int scale_attn;        /* divide scores by sqrt(head_dim) (default on) */
    int scale_inv_layer;   /* also divide by layer index + 1 */
    int eos;               /* end-of-text id (50256 for GPT-2), -1 if none */
    int tied;              /* lm_head is wte (tie_word_embeddings, the default) */
} model_cfg;

typedef struct {
    const float *ln1_w, *ln1_b;   /* (C) */
    const float *qkv_w, *qkv_b;   /* (C, 3C), (3C) */
    const float *attn_w, *attn_b; /* (C, C), (C) */
    const float *ln2_w, *ln2_b;   /* (C) */
    const float *fc_w, *fc_b;     /* (C, I), (I) */
    const float *proj_w, *proj_b; /* (I, C), (C) */
} layer_weights;

typedef struct {
    char *dir, *name;      /* name: the directory's last component */
    model_cfg cfg;
    st_file st;
    tokenizer *tok;
    const float *wte;      /* (V, C) */
    const float *wpe;      /* (n_ctx, C) */
    const float *lnf_w, *lnf_b;
    const float *lm_head;  /* (V, C); == wte when tied */
    layer_weights *layers;
    void **owned;          /* converted copies, freed with the model */
    int n_owned;
    size_t weight_bytes;   /* bytes of fp32 weights the forward pass reads */
    int unprefixed;        /* tensor names lack the "transformer." prefix */
} model;

/* Load the model in `dir`. NULL with one line in err (naming the file and the
 * tensor) on any problem; nothing is leaked. */
model *model_load(const char *dir, char *err);
void model_free(model *m);

/* The layer matrices (and an untied lm_head) are read only to build a
 * device's own copies of them (packed for the CPU, 16-bit on a GPU). Once
 * that is done their memory is given back and the pointers become NULL;
 * the embeddings, norms and biases stay. */
void model_release_matrices(model *m);

/* Parse and range-check config.json alone (used by model_load and tests). */
int model_read_config(const char *path, model_cfg *cfg, char *err);

#endif
