/* Public API of the tokenizer module: loads a Hugging Face tokenizer.json (BPE with the
 * ByteLevel or SentencePiece-style pipelines), encodes text to ids, decodes ids to text, and
 * streams decoded text during generation. Encodings match HF `tokenizers` id for id. */
#ifndef TOK_H
#define TOK_H

#include <stddef.h>
#include <stdint.h>

/* A loaded tokenizer. Immutable after tok_load: encode, decode and the getters may be called
 * from any number of threads at once. Owned by the caller of tok_load; release with tok_free. */
typedef struct tok tok_t;

/* Load options; pass NULL for the defaults. Zero fields mean "default". */
typedef struct tok_opts {
    size_t max_file_bytes;  /* tokenizer.json larger than this is rejected; default 256 MiB */
    size_t max_input_bytes; /* tok_encode of longer text fails with RCD_ETOOBIG; default 8 MiB.
                             * Encoding needs transient memory of up to ~70 bytes per input
                             * byte (one pre-token as long as the input, fully merged). */
} tok_opts_t;

/* Encode flags. */
enum {
    TOK_ADD_SPECIAL = 1 << 0,   /* apply the post-processor (bos/eos template), as HF's
                                 * add_special_tokens=True */
    TOK_UTF8_REPLACE = 1 << 1,  /* replace invalid UTF-8 with U+FFFD (one per maximal invalid
                                 * subpart, as Python's errors="replace") instead of failing
                                 * with RCD_EUTF8 */
    TOK_SPLIT_SPECIAL = 1 << 2, /* do not match *special* added tokens in the text: "<|eot|>"
                                 * typed by a user is tokenized as plain text (HF's
                                 * encode_special_tokens / split_special_tokens) */
};

/* Decode / stream flags. */
enum {
    TOK_SKIP_SPECIAL = 1 << 0, /* drop special added tokens, as skip_special_tokens=True */
};

/* Caller-owned growable id buffer. Start zeroed ({0}); tok_encode replaces its contents and
 * grows v with realloc as needed, so one buffer can be reused across calls. The caller owns v
 * and releases it with tok_ids_free. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids_t;

/* Caller-owned growable text buffer, same rules as tok_ids_t. After a successful tok_decode,
 * p holds n bytes of UTF-8 followed by a NUL (not counted in n). */
typedef struct tok_text {
    char *p;
    size_t n, cap;
} tok_text_t;

void tok_ids_free(tok_ids_t *ids);
void tok_text_free(tok_text_t *text);

/* Loads a tokenizer. `path` is either a directory (reads tokenizer.json and, if present,
 * tokenizer_config.json for bos/eos and the chat template) or a tokenizer.json file.
 * On success *out owns a new tokenizer. On failure returns a negative RCD_E* code, writes a
 * message naming the file and JSON path into err (NULL-safe), and *out is NULL. A feature of
 * tokenizer.json this module does not implement is RCD_EUNSUPPORTED, never ignored. */
int tok_load(const char *path, const tok_opts_t *opts, tok_t **out, char *err, size_t errlen);

/* Releases a tokenizer; NULL is a no-op. No stream made from it may outlive it. */
void tok_free(tok_t *tok);

/* Encodes `len` bytes of UTF-8 text (need not be NUL-terminated) into `out`, replacing its
 * contents. Invalid UTF-8 fails with RCD_EUTF8 (message gives the byte offset) unless
 * TOK_UTF8_REPLACE. Returns 0 or a negative RCD_E* code; on failure out->n is 0. */
int tok_encode(const tok_t *tok, const char *text, size_t len, int flags, tok_ids_t *out, char *err,
               size_t errlen);

/* Decodes ids to text into `out`, replacing its contents, exactly as HF's
 * Tokenizer.decode. Ids that are not in the vocabulary are skipped (as HF does). */
int tok_decode(const tok_t *tok, const int32_t *ids, size_t n, int flags, tok_text_t *out,
               char *err, size_t errlen);

/* One past the largest id of the vocabulary, added tokens included. */
size_t tok_vocab_size(const tok_t *tok);

/* The token string of an id as stored in the vocabulary ("Ġthe", "▁the", "<0x0A>",
 * "<|endoftext|>"), or NULL if the id has none. The pointer is owned by tok and lives as long
 * as it; *len (if not NULL) receives its length in bytes. */
const char *tok_id_to_piece(const tok_t *tok, int32_t id, size_t *len);

/* The id of a token string (added tokens first, then the model vocabulary), or -1. */
int32_t tok_piece_to_id(const tok_t *tok, const char *piece, size_t len);

/* Whether id is a special added token (skipped by TOK_SKIP_SPECIAL). */
int tok_is_special(const tok_t *tok, int32_t id);

/* bos/eos ids from tokenizer_config.json (bos_token / eos_token), or -1 when not given. */
int32_t tok_bos_id(const tok_t *tok);
int32_t tok_eos_id(const tok_t *tok);
/* The bos_token / eos_token strings of tokenizer_config.json (a string or {"content": ...}),
 * or NULL when not given. Owned by tok. */
const char *tok_bos_token(const tok_t *tok);
const char *tok_eos_token(const tok_t *tok);

/* The chat template (Jinja source) from tokenizer_config.json, or NULL. When the config has a
 * list of named templates, the one named "default" (else the first). Owned by tok. */
const char *tok_chat_template(const tok_t *tok);

/* Streaming detokenizer for generation. Feed ids one at a time; each push yields the text
 * they add. Deltas never split a UTF-8 character or a byte-fallback sequence: bytes of an
 * unfinished character are held until the token that completes it. The concatenation of all
 * deltas and the final flush equals tok_decode of the same ids for any sequence that decodes
 * to valid UTF-8 (invalid byte runs are replaced per maximal subpart, which can differ from
 * tok_decode's replacement count). One stream per sequence; not thread-safe. */
typedef struct tok_stream tok_stream_t;

/* Creates a stream over tok (which must outlive it); flags: TOK_SKIP_SPECIAL. *out is owned
 * by the caller; release with tok_stream_free. */
int tok_stream_new(const tok_t *tok, int flags, tok_stream_t **out, char *err, size_t errlen);

/* Appends one id. *delta and *delta_len receive the new text (possibly empty); the bytes are
 * owned by the stream and valid until the next call on it. */
int tok_stream_push(tok_stream_t *s, int32_t id, const char **delta, size_t *delta_len, char *err,
                    size_t errlen);

/* Ends the sequence: yields whatever is still held (an unfinished character becomes U+FFFD,
 * as tok_decode would). The stream is then empty and can be reused for a new sequence. */
int tok_stream_flush(tok_stream_t *s, const char **delta, size_t *delta_len, char *err,
                     size_t errlen);

void tok_stream_free(tok_stream_t *s);

#endif
