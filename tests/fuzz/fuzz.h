/* Shared by leash's libFuzzer targets: how an input is cut into fields, the encodings a
 * target puts a password through, and the password oracle. */
#ifndef LEASH_FUZZ_H
#define LEASH_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Each target's entry point, called by libFuzzer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An input: a selector byte (which form the target builds), then up to FZ_FIELDS fields
 * separated by NUL bytes (missing ones are ""), each cut to FZ_FIELD_MAX bytes. */
#define FZ_FIELDS 4
#define FZ_FIELD_MAX 1024
typedef struct fz_input {
    unsigned sel;
    char *field[FZ_FIELDS];
} fz_input;
void fz_parse(const uint8_t *data, size_t size, fz_input *in);
void fz_input_free(fz_input *in);

/* A growing NUL-terminated string; aborts when out of memory. */
typedef struct fz_buf {
    char *s;
    size_t len, cap;
} fz_buf;
void fz_add(fz_buf *b, const char *s);
void fz_addc(fz_buf *b, char c);
void fz_clear(fz_buf *b);
void fz_buf_free(fz_buf *b);

/* s percent-encoded: bytes outside 0x21..0x7e, '%' and any byte of also. */
void fz_add_pct(fz_buf *b, const char *s, const char *also);
/* s with a backslash before '\\' and before any byte of special. */
void fz_add_escaped(fz_buf *b, const char *s, const char *special);
/* s with each quote doubled (SQL). */
void fz_add_doubled(fz_buf *b, const char *s, char quote);
/* s percent-decoded (a '%' without two hex digits is kept; %00 becomes \x01). */
void fz_pct_decode(const char *s, fz_buf *out);

/* A malloc'd copy of s with every letter and digit moved within its class (0-9, a-f, g-z,
 * A-F, G-Z), every other byte and every %XX escape kept: code that looks at character
 * classes (digits, hex, delimiters) or decodes escapes takes the same path for both, while
 * the text itself differs almost everywhere. */
char *fz_rotate(const char *s);
/* Replaces every byte of s that is in set by with. */
void fz_replace(char *s, const char *set, char with);
/* Breaks every "password" (any case) in s into "passw0rd". */
void fz_unkey(char *s);
/* Keeps only [a-z0-9 ,.;()_-] in s (others become ' ', upper case is lowered) and breaks
 * the word "password" (for fields that must not form a key of their own). */
void fz_plain(char *s);

/* The oracle: out is what the code under test said for an input holding the password in
 * one form (pw: raw, as placed, decoded), out_rot what it said for the same input with
 * fz_rotate(password) in its place (pw_rot, the same form of it). When both are of one
 * length (the same path through the code), any 4 consecutive characters of pw (in any
 * case) that out holds where out_rot holds something else came from the password, not from
 * the rest of the input or the message's own words: the target aborts, naming itself, what
 * it checked and the text. NULL outputs are "". */
void fz_check(const char *target, const char *what, const char *pw, const char *pw_rot,
              const char *out, const char *out_rot);

/* The same for a password placed where its "@host" is missing ("redis://user:PW/0"): there
 * a password of digits reads as a port and a message may name that port, so windows of
 * digits only are not counted. */
void fz_check_no_host(const char *target, const char *what, const char *pw, const char *pw_rot,
                      const char *out, const char *out_rot);

#endif /* LEASH_FUZZ_H */
