/* Tokenizer internals shared by the .c files of workers/tokenizer: the loaded pipeline
 * (normalizers, pre-tokenizers, BPE model, decoders, post-processor, added tokens) and small
 * helpers. Callers outside this folder include only tok.h. */
#ifndef TOK_INT_H
#define TOK_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "workers/tokenizer/tok.h"

#define TOK__MAX_STAGES 16     /* pre-tokenizers / normalizers / decoders after flattening */
#define TOK__CP_DIRECT 0x10000 /* single-character tokens below this code point: table lookup */

/* ---- growable buffers ------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} tok__buf_t;

int tok__buf_reserve(tok__buf_t *b, size_t extra);
int tok__buf_put(tok__buf_t *b, const void *p, size_t n);
void tok__buf_free(tok__buf_t *b);

typedef struct {
    size_t start, end;
    int match;
} tok__span_t;

typedef struct {
    tok__span_t *v;
    size_t n, cap;
} tok__spans_t;

int tok__spans_push(tok__spans_t *s, size_t start, size_t end, int match);
void tok__spans_free(tok__spans_t *s);
/* First occurrence of needle (nn >= 1) in hay, or NULL. Not memmem: ASan's interceptor for it
 * checks the whole haystack on every call, which makes repeated searches quadratic. */
const char *tok__find(const char *hay, size_t n, const char *needle, size_t nn);

int tok__ids_push(tok_ids_t *ids, int32_t id);

/* ---- UTF-8 (tok_utf8.c) ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid/truncated. */
size_t tok__utf8_seq(const unsigned char *s, size_t n);
/* Decodes one character of known-valid UTF-8; returns its byte length. */
size_t tok__utf8_next(const unsigned char *s, uint32_t *cp);
size_t tok__utf8_put(uint32_t cp, char out[4]);
/* 1 if all n bytes are valid UTF-8; otherwise 0 and *bad is the first invalid offset. */
int tok__utf8_valid(const char *s, size_t n, size_t *bad);
/* Appends s to out with each maximal invalid subpart replaced by U+FFFD (WHATWG / Python
 * errors="replace" / Rust from_utf8_lossy). When hold_tail is set, a truncated but so far
 * valid sequence at the very end is not written; *held receives its length (else 0). */
int tok__utf8_lossy(const char *s, size_t n, tok__buf_t *out, int hold_tail, size_t *held);
/* Unicode White_Space (Rust char::is_whitespace, Oniguruma \s). */
int tok__is_space(uint32_t cp);

/* ---- hash maps (tok_map.c) ------------------------------------------------------------- */

/* Strings in a pool, id -> (off, len); map string -> id by open addressing. */
typedef struct {
    char *pool;
    size_t pool_n, pool_cap;
    uint32_t *off, *len; /* by id; len == UINT32_MAX: no string for this id */
    size_t n_ids;        /* max id + 1 */
    size_t ids_cap;
    uint32_t *slots; /* id + 1, 0 empty */
    size_t mask;
    size_t count;
} tok__strmap_t;

int tok__strmap_init(tok__strmap_t *m, size_t expect);
void tok__strmap_free(tok__strmap_t *m);
/* Adds (s, id). Returns 1 when s was already present (its id is left unchanged), 0 when
 * added, or RCD_ENOMEM / RCD_EEXISTS (another string already has this id). */
int tok__strmap_add(tok__strmap_t *m, const char *s, size_t n, int32_t id);
int32_t tok__strmap_get(const tok__strmap_t *m, const char *s, size_t n);
const char *tok__strmap_str(const tok__strmap_t *m, int32_t id, size_t *len);

typedef struct {
    uint64_t key; /* (a << 32) | b; UINT64_MAX empty */
    uint32_t rank;
    int32_t new_id;
} tok__merge_t;

typedef struct {
    tok__merge_t *slots;
    size_t mask, count;
} tok__mergemap_t;

int tok__mergemap_init(tok__mergemap_t *m, size_t expect);
void tok__mergemap_free(tok__mergemap_t *m);
/* Later entries for the same pair replace earlier ones, as in HF's HashMap collect. */
void tok__mergemap_put(tok__mergemap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);

static inline uint64_t tok__mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline uint64_t tok__pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

/* Inline: the BPE inner loop is mostly these lookups. */
static inline const tok__merge_t *tok__mergemap_get(const tok__mergemap_t *m, int32_t a, int32_t b)
{
    uint64_t k = tok__pair_key(a, b);
    size_t j = tok__mix(k) & m->mask;
    for (;;) {
        const tok__merge_t *e = &m->slots[j];
        if (e->key == k) return e;
        if (e->key == UINT64_MAX) return NULL;
        j = (j + 1) & m->mask;
    }
}

/* ---- patterns (tok_regex.c) ------------------------------------------------------------ */

/* A Pattern of tokenizer.json: {"String": "..."} or {"Regex": "..."}; also ByteLevel's
 * built-in GPT-2 regex. Regexes are Oniguruma (Ruby syntax) in HF; they are translated to
 * PCRE2 so that \s, \w, \h and friends keep Oniguruma's meaning. */
typedef struct {
    char *lit;
    size_t lit_len;
    pcre2_code *re; /* NULL: literal */
    int jit;
} tok__pat_t;

int tok__pat_compile_regex(tok__pat_t *p, const char *onig, size_t n, char *err, size_t errlen);
int tok__pat_set_literal(tok__pat_t *p, const char *s, size_t n);
void tok__pat_free(tok__pat_t *p);
/* Spans covering s (matches and the gaps between them), HF's Pattern::find_matches. */
int tok__pat_find(const tok__pat_t *p, const char *s, size_t n, pcre2_match_data **md,
                  tok__spans_t *out, char *err, size_t errlen);

enum {
    TOK__SPLIT_REMOVED,
    TOK__SPLIT_ISOLATED,
    TOK__SPLIT_MERGED_PREV,
    TOK__SPLIT_MERGED_NEXT,
    TOK__SPLIT_CONTIGUOUS
};
/* Applies a SplitDelimiterBehavior to spans in place; the result has match=0 for pieces to
 * keep and match=1 for removed ones (empty pieces are for the caller to skip). */
void tok__split_behavior(tok__spans_t *sp, int behavior, int invert);

/* ---- pipeline description -------------------------------------------------------------- */

enum {
    TOK__N_NFC,
    TOK__N_NFD,
    TOK__N_NFKC,
    TOK__N_NFKD,
    TOK__N_PREPEND,
    TOK__N_REPLACE,
    TOK__N_STRIP
};

typedef struct {
    int kind;
    tok__pat_t pat; /* Replace */
    char *str;      /* Prepend text / Replace content */
    size_t str_len;
    int left, right; /* Strip */
} tok__norm_t;

enum { TOK__P_BYTELEVEL, TOK__P_METASPACE, TOK__P_SPLIT, TOK__P_DIGITS };
enum { TOK__PREPEND_NEVER, TOK__PREPEND_ALWAYS, TOK__PREPEND_FIRST };

typedef struct {
    int kind;
    int add_prefix_space, use_regex; /* ByteLevel (regex in pat) */
    tok__pat_t pat;                  /* ByteLevel / Split */
    int behavior, invert;            /* Split */
    char rep[4];                     /* Metaspace replacement character */
    size_t rep_len;
    int prepend, split; /* Metaspace */
    int individual;     /* Digits */
} tok__pre_t;

enum {
    TOK__D_BYTELEVEL,
    TOK__D_METASPACE,
    TOK__D_REPLACE,
    TOK__D_BYTEFALLBACK,
    TOK__D_FUSE,
    TOK__D_STRIP
};

typedef struct {
    int kind;
    char rep[4]; /* Metaspace */
    size_t rep_len;
    int drop_first; /* Metaspace: prepend_scheme != never */
    tok__pat_t pat; /* Replace */
    char *content;
    size_t content_len;
    uint32_t strip_cp; /* Strip */
    size_t start, stop;
} tok__dec_t;

typedef struct {
    tok__strmap_t vocab;
    tok__mergemap_t merges;
    int32_t unk_id; /* -1: none or not in vocab (see unk_name) */
    char *unk_name; /* unk_token as written, NULL if none */
    int fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix; /* continuing_subword_prefix / end_of_word_suffix; NULL if none */
    size_t prefix_len, suffix_len;
    int32_t byte_ids[256]; /* "<0xXX>" tokens, -1 where absent */
    int32_t *cp_ids;       /* [TOK__CP_DIRECT] single-character token ids, -1 absent */
} tok__bpe_t;

typedef struct {
    uint32_t off, len;           /* content in tok->added_pool */
    uint32_t norm_off, norm_len; /* normalized content (normalized tokens) */
    int32_t id;
    uint8_t special, single_word, lstrip, rstrip, normalized;
} tok__added_t;

/* Byte trie over added-token contents for leftmost-longest matching. */
typedef struct {
    uint32_t child, sibling; /* node indexes, 0 = none (node 0 is the root) */
    int32_t token;           /* index into tok->added, -1 if no token ends here */
    uint8_t byte;
} tok__trie_node_t;

typedef struct {
    tok__trie_node_t *nodes;
    size_t n, cap;
    uint8_t first[32]; /* bitmap of first bytes */
} tok__trie_t;

struct tok {
    tok__norm_t norms[TOK__MAX_STAGES];
    size_t n_norms;
    tok__pre_t pres[TOK__MAX_STAGES];
    size_t n_pres;
    tok__dec_t decs[TOK__MAX_STAGES];
    size_t n_decs;
    int has_decoder;
    tok__bpe_t bpe;

    int32_t *post_pre, *post_post; /* ids the post-processor puts around the sequence */
    size_t n_post_pre, n_post_post;

    tok__added_t *added;
    size_t n_added;
    char *added_pool;
    size_t added_pool_n;
    tok__strmap_t added_map; /* content -> id */
    int32_t *added_by_id;    /* [vocab_size] index into added, -1 */
    uint8_t *special_by_id;  /* [vocab_size] */
    tok__trie_t trie_raw, trie_norm;
    pcre2_code *word_re; /* Rust regex \w, for single_word */

    size_t vocab_size;
    int32_t bos, eos;
    char *chat_template;
    size_t max_input;
};

/* ---- stages ---------------------------------------------------------------------------- */

int tok__trie_add(tok__trie_t *t, const char *s, size_t n, int32_t token);
void tok__trie_free(tok__trie_t *t);

/* Runs the normalizer chain over s into out (replacing its contents). *orig0 (may be NULL)
 * is cleared when the result no longer starts at the first original character. */
int tok__normalize(const tok_t *t, const char *s, size_t n, tok__buf_t *out, tok__buf_t *tmp,
                   int *orig0, pcre2_match_data **md, char *err, size_t errlen);

typedef struct {
    uint32_t *id;
    int32_t *prev, *next;
    uint8_t *dead;
    size_t n, cap;
    struct tok__heap_ent *heap;
    size_t heap_n, heap_cap;
    tok__buf_t key;
} tok__bpe_scratch_t;

void tok__bpe_scratch_free(tok__bpe_scratch_t *s);
/* Encodes one pre-token (valid UTF-8) with the BPE model, appending ids to out. */
int tok__bpe_word(const tok__bpe_t *m, const char *w, size_t n, tok__bpe_scratch_t *sc,
                  tok_ids_t *out, char *err, size_t errlen);
int tok__bpe_finish_load(tok__bpe_t *m, char *err, size_t errlen);
void tok__bpe_free(tok__bpe_t *m);

/* The token string an id decodes from (added tokens first), or NULL. */
const char *tok__id_str(const tok_t *t, int32_t id, size_t *len);

/* Decodes ids; with stream set, a character left unfinished at the end (ByteLevel bytes or a
 * byte-fallback run) is held back instead of replaced, and *held says so. */
int tok__decode(const tok_t *t, const int32_t *ids, size_t n, int flags, int stream,
                tok__buf_t *out, int *held, char *err, size_t errlen);

/* GPT-2's pre-tokenization regex, used by ByteLevel with use_regex. */
extern const char tok__gpt2_pattern[];
/* ByteLevel's byte <-> character mapping (GPT-2's bytes_to_unicode): printable Latin-1 bytes
 * map to themselves, the other 68 to U+0100.. in byte order. */
static inline uint32_t tok__byte_cp(unsigned b)
{
    if (b <= 32) return 256 + b;
    if (b >= 127 && b <= 160) return 289 + (b - 127);
    if (b == 173) return 323;
    return b;
}

static inline int tok__cp_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 255 && cp != 173)) return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)(cp - 256);
    if (cp >= 289 && cp <= 322) return (int)(cp - 289 + 127);
    if (cp == 323) return 173;
    return -1;
}

#endif
