/* The fuzz targets' shared helpers: input fields, encodings, the password oracle. */
#include "fuzz.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void fz_parse(const uint8_t *data, size_t size, fz_input *in)
{
    memset(in, 0, sizeof *in);
    size_t i = 0;
    if (size > 0)
        in->sel = data[i++];
    for (int f = 0; f < FZ_FIELDS; f++) {
        size_t start = i;
        while (i < size && data[i] != 0)
            i++;
        size_t n = i - start;
        if (n > FZ_FIELD_MAX)
            n = FZ_FIELD_MAX;
        in->field[f] = malloc(n + 1);
        if (!in->field[f])
            abort();
        memcpy(in->field[f], data + start, n);
        in->field[f][n] = '\0';
        if (i < size)
            i++; /* the NUL */
    }
}

void fz_input_free(fz_input *in)
{
    for (int f = 0; f < FZ_FIELDS; f++)
        free(in->field[f]);
}

static void grow(fz_buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s)
        abort();
    b->s = s;
    b->cap = cap;
}

void fz_addc(fz_buf *b, char c)
{
    grow(b, 1);
    b->s[b->len++] = c;
    b->s[b->len] = '\0';
}

void fz_add(fz_buf *b, const char *s)
{
    size_t n = strlen(s);
    grow(b, n);
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

void fz_clear(fz_buf *b)
{
    grow(b, 0);
    b->len = 0;
    b->s[0] = '\0';
}

void fz_buf_free(fz_buf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

void fz_add_pct(fz_buf *b, const char *s, const char *also)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || c == '%' || strchr(also, c)) {
            fz_addc(b, '%');
            fz_addc(b, hex[c >> 4]);
            fz_addc(b, hex[c & 15]);
        } else {
            fz_addc(b, (char)c);
        }
    }
}

void fz_add_escaped(fz_buf *b, const char *s, const char *special)
{
    for (; *s; s++) {
        if (*s == '\\' || strchr(special, *s))
            fz_addc(b, '\\');
        fz_addc(b, *s);
    }
}

void fz_add_doubled(fz_buf *b, const char *s, char quote)
{
    for (; *s; s++) {
        if (*s == quote)
            fz_addc(b, quote);
        fz_addc(b, *s);
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void fz_pct_decode(const char *s, fz_buf *out)
{
    fz_clear(out);
    for (; *s; s++) {
        int hi = s[0] == '%' ? hexval(s[1]) : -1;
        int lo = hi >= 0 ? hexval(s[2]) : -1;
        if (lo >= 0) {
            /* %00 as \x01, so that a decoded string stays one C string as long as the
             * decoded fz_rotate of it */
            fz_addc(out, (char)(hi || lo ? hi * 16 + lo : 1));
            s += 2;
        } else {
            fz_addc(out, *s);
        }
    }
}

static char rot(char c)
{
    if (c >= '0' && c <= '9')
        return (char)('0' + (c - '0' + 1) % 10);
    if (c >= 'a' && c <= 'f')
        return (char)('a' + (c - 'a' + 1) % 6);
    if (c >= 'A' && c <= 'F')
        return (char)('A' + (c - 'A' + 1) % 6);
    if (c >= 'g' && c <= 'z')
        return (char)('g' + (c - 'g' + 1) % 20);
    if (c >= 'G' && c <= 'Z')
        return (char)('G' + (c - 'G' + 1) % 20);
    return c;
}

char *fz_rotate(const char *s)
{
    char *r = strdup(s);
    if (!r)
        abort();
    for (char *p = r; *p; p++) {
        if (p[0] == '%' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            p += 2; /* an escape decodes to the same byte: %99 must not become %00 */
            continue;
        }
        *p = rot(*p);
    }
    return r;
}

void fz_replace(char *s, const char *set, char with)
{
    for (; *s; s++)
        if (strchr(set, *s))
            *s = with;
}

void fz_unkey(char *s)
{
    for (char *p = strcasestr(s, "password"); p; p = strcasestr(p, "password"))
        p[4] = '0'; /* "passw0rd" */
}

void fz_plain(char *s)
{
    for (char *p = s; *p; p++) {
        unsigned char c = (unsigned char)tolower((unsigned char)*p);
        *p = (char)((isalnum(c) && c < 0x80) || strchr(" ,.;()_-", c) ? c : ' ');
    }
    fz_unkey(s);
}

static int all_digits(const char *w)
{
    for (; *w; w++)
        if (*w < '0' || *w > '9')
            return 0;
    return 1;
}

static void check(const char *target, const char *what, const char *pw, const char *pw_rot,
                  const char *out, const char *out_rot, int skip_digits)
{
    size_t n = strlen(pw);
    if (!out)
        out = "";
    if (!out_rot)
        out_rot = "";
    if (strlen(pw_rot) != n)
        abort(); /* the two forms must line up */
    /* Outputs of one length took the same path (the two inputs differ only in the letters
     * and digits of the password); then a fragment is a leak where out_rot differs. Outputs
     * of different lengths took different paths, whose words cannot be compared. */
    if (strlen(out) != strlen(out_rot))
        return;
    for (size_t i = 0; i + 4 <= n; i++) {
        char w[5], wr[5];
        memcpy(w, pw + i, 4);
        memcpy(wr, pw_rot + i, 4);
        w[4] = wr[4] = '\0';
        if (strcasecmp(w, wr) == 0)
            continue; /* nothing in it to tell the password from the rest */
        if (skip_digits && all_digits(w))
            continue;
        const char *hit = strcasestr(out, w);
        while (hit && strncasecmp(out_rot + (hit - out), w, 4) == 0)
            hit = strcasestr(hit + 1, w);
        if (hit) {
            fprintf(stderr,
                    "\n=== fuzz-%s: a password fragment in the output (%s)\n"
                    "password: \"%s\"\nfragment: \"%s\"\noutput:   \"%s\"\n"
                    "output with the password changed: \"%s\"\n",
                    target, what, pw, w, out, out_rot);
            abort();
        }
    }
}

void fz_check(const char *target, const char *what, const char *pw, const char *pw_rot,
              const char *out, const char *out_rot)
{
    check(target, what, pw, pw_rot, out, out_rot, 0);
}

void fz_check_no_host(const char *target, const char *what, const char *pw, const char *pw_rot,
                      const char *out, const char *out_rot)
{
    check(target, what, pw, pw_rot, out, out_rot, 1);
}
