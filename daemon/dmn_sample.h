/* daemon: token sampling from one row of logits — penalties, temperature, top-k, top-p,
 * min-p, a seeded generator for reproducible draws, and log-probabilities. */
#ifndef DMN_SAMPLE_H
#define DMN_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dmn_sampling {
    float temperature;        /* 0: greedy */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    float presence_penalty, frequency_penalty;
    uint64_t seed;
} dmn_sampling_t;

typedef struct dmn_sampler {
    dmn_sampling_t p;
    int vocab;
    uint64_t rng[4];
    uint32_t *counts; /* occurrences of each id among generated tokens */
    uint8_t *seen;    /* 1 for ids in prompt or output (repetition penalty) */
    float *work;      /* vocab scratch */
    int32_t *idx;     /* vocab scratch */
} dmn_sampler_t;

int dmn_sampler_init(dmn_sampler_t *s, const dmn_sampling_t *p, int vocab);
void dmn_sampler_free(dmn_sampler_t *s);
void dmn_sampler_seen(dmn_sampler_t *s, int32_t id);   /* a prompt token */
void dmn_sampler_accept(dmn_sampler_t *s, int32_t id); /* a generated token */
/* Samples from logits (not modified). */
int32_t dmn_sample(dmn_sampler_t *s, const float *logits);
/* A verify row that checks `draft`, drawn by a draft model from q (vocab floats, summing to 1):
 * p is the distribution dmn_sample draws from (penalties, temperature, top-k, min-p, top-p).
 * Temperature > 0: accepts draft with probability min(1, p(draft) / q(draft)) (one draw),
 * else draws from norm(max(0, p - q)) (a second draw; from p when that is all zero): the
 * token is then distributed exactly as p. Greedy: dmn_sample. */
int32_t dmn_sample_spec(dmn_sampler_t *s, const float *logits, int32_t draft, const float *q);
/* log-softmax of the raw logits at id, and the n most likely ids with theirs. */
float dmn_logprobs(dmn_sampler_t *s, const float *logits, int32_t id, int n, int32_t *top_ids,
                   float *top_lp);

#endif
