/*
 * lib/appliance/manifest.c — OVF manifests (.mf): parse "ALGO(file)= hex" lines and compute file
 * digests with OpenSSL's EVP interface.
 *
 * The idea: a manifest is untrusted text, so the parser accepts exactly the two spellings real
 * tools write (VirtualBox "SHA1 (f) = x", VMware/ovftool "SHA256(f)= x") and checks every digest's
 * length against its algorithm before anything compares against it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "vessel/appliance.h"
#include "vessel/util.h"

const char *appliance_digest_name(enum appliance_digest_algo algo)
{
    return algo == APPLIANCE_SHA1 ? "SHA1" : "SHA256";
}

static size_t digest_length(enum appliance_digest_algo algo)
{
    return algo == APPLIANCE_SHA1 ? 20 : 32;
}

void appliance_manifest_free(struct appliance_manifest *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->count; i++)
        free(m->entries[i].file);
    free(m->entries);
    m->entries = NULL;
    m->count = 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One line without its newline: [start, end). */
static int parse_line(struct appliance_manifest *m, const char *s, const char *end,
                      const char *source, int line)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    if (s == end)
        return 0;
    enum appliance_digest_algo algo;
    if ((size_t)(end - s) >= 6 && !strncasecmp(s, "SHA256", 6)) {
        algo = APPLIANCE_SHA256;
        s += 6;
    } else if ((size_t)(end - s) >= 4 && !strncasecmp(s, "SHA1", 4)) {
        algo = APPLIANCE_SHA1;
        s += 4;
    } else {
        return vs_error(-EINVAL, "%s: line %d: algorithm: expected SHA1 or SHA256", source, line);
    }
    while (s < end && *s == ' ')
        s++;
    if (s == end || *s != '(')
        return vs_error(-EINVAL, "%s: line %d: file name: expected '(' after %s", source, line,
                        appliance_digest_name(algo));
    s++;
    /* the file name runs to the last ")" before "=" so names may hold parentheses */
    const char *eq = memrchr(s, '=', (size_t)(end - s));
    const char *close = eq ? memrchr(s, ')', (size_t)(eq - s)) : NULL;
    if (!eq || !close)
        return vs_error(-EINVAL, "%s: line %d: file name: expected '(FILE)= DIGEST'", source, line);
    for (const char *p = close + 1; p < eq; p++)
        if (*p != ' ')
            return vs_error(-EINVAL, "%s: line %d: digest: unexpected text before '='", source,
                            line);
    size_t name_len = (size_t)(close - s);
    if (name_len == 0 || memchr(s, '\0', name_len))
        return vs_error(-EINVAL, "%s: line %d: file name: empty or not text", source, line);
    const char *hex = eq + 1;
    while (hex < end && *hex == ' ')
        hex++;
    size_t want = digest_length(algo), hex_len = (size_t)(end - hex);
    if (hex_len != want * 2)
        return vs_error(-EINVAL, "%s: line %d: digest: %zu hex digits, %s needs %zu", source, line,
                        hex_len, appliance_digest_name(algo), want * 2);
    struct appliance_manifest_entry e = {.algo = algo, .digest_len = want, .line = line};
    for (size_t i = 0; i < want; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return vs_error(-EINVAL, "%s: line %d: digest: '%c' is not a hex digit", source, line,
                            hi < 0 ? hex[2 * i] : hex[2 * i + 1]);
        e.digest[i] = (unsigned char)(hi << 4 | lo);
    }
    /* duplicate names would let a second line shadow the first: refuse */
    for (size_t i = 0; i < m->count; i++)
        if (strlen(m->entries[i].file) == name_len && !memcmp(m->entries[i].file, s, name_len))
            return vs_error(-EINVAL, "%s: line %d: file name: '%.*s' listed twice (line %d)",
                            source, line, (int)VS_MIN(name_len, 200), s, m->entries[i].line);
    if (!(e.file = strndup(s, name_len)))
        return vs_error(-ENOMEM, "%s: out of memory", source);
    struct appliance_manifest_entry *grown =
        realloc(m->entries, (m->count + 1) * sizeof(*m->entries));
    if (!grown) {
        free(e.file);
        return vs_error(-ENOMEM, "%s: out of memory", source);
    }
    m->entries = grown;
    m->entries[m->count++] = e;
    return 0;
}

int appliance_manifest_parse(const char *text, size_t len, const char *source,
                             struct appliance_manifest *out)
{
    struct appliance_manifest m = {0};
    const char *p = text, *end = text + len;
    int line = 0;
    if (!source)
        source = "manifest";
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        line++;
        int rc = parse_line(&m, p, line_end, source, line);
        if (rc < 0) {
            appliance_manifest_free(&m);
            return rc;
        }
        p = nl ? nl + 1 : end;
    }
    if (m.count == 0)
        return vs_error(-EINVAL, "%s: line %d: no digest lines", source, line);
    *out = m;
    return 0;
}

const struct appliance_manifest_entry *appliance_manifest_find(const struct appliance_manifest *m,
                                                               const char *file)
{
    for (size_t i = 0; i < m->count; i++)
        if (!strcmp(m->entries[i].file, file))
            return &m->entries[i];
    return NULL;
}

int appliance_file_digest(const char *path, enum appliance_digest_algo algo,
                          unsigned char out[APPLIANCE_DIGEST_MAX], size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t bufsize = 1 << 20;
    unsigned char *buf = vs_malloc(bufsize);
    int rc = 0;
    if (!ctx || !buf) {
        rc = vs_error(-ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (!EVP_DigestInit_ex(ctx, algo == APPLIANCE_SHA1 ? EVP_sha1() : EVP_sha256(), NULL)) {
        rc = vs_error(-EIO, "%s: %s digest unavailable", path, appliance_digest_name(algo));
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, bufsize);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = vs_error_errno(-errno, "%s: read", path);
            goto out;
        }
        if (n == 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, out, &len);
    *out_len = len;
out:
    free(buf);
    EVP_MD_CTX_free(ctx);
    close(fd);
    return rc;
}
