/*
 * lib/mgmt/http.c — a deliberately small HTTP/1.1 request parser for the daemon's API, and the
 * client the CLI uses to talk to it.
 *
 * Why no library: the API needs one request per connection on a unix socket, a handful of
 * methods, and bodies of a few KiB. libmicrohttpd would do, but its surface (TLS, chunking,
 * pipelining, its own thread pools) is far larger than the subset we serve, and every byte on this
 * socket comes from a possibly hostile local client. The idea that keeps this safe: the head is
 * parsed only once it is complete inside a fixed buffer (MGMT_HTTP_MAX_HEAD), every line is
 * checked against the grammar subset we accept, and anything else is rejected with one status and
 * one line — no obs-fold, no Transfer-Encoding, at most one Content-Length of plain digits.
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "mgmt/mgmt-internal.h"

static int http_fail(int *http_status, int status, const char *msg)
{
    *http_status = status;
    return vs_error(-EINVAL, "%s", msg);
}

static bool is_tchar(char c)
{
    return isalnum((unsigned char)c) || strchr("!#$%&'*+-.^_`|~", c);
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

int mgmt_http_percent_decode(const char *in, size_t len, char *out, size_t out_len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= len)
                return vs_error(-EINVAL, "truncated %%-escape");
            int hi = hexval(in[i + 1]), lo = hi < 0 ? -1 : hexval(in[i + 2]);
            if (hi < 0 || lo < 0)
                return vs_error(-EINVAL, "bad %%-escape");
            c = (char)(hi * 16 + lo);
            if (c == 0)
                return vs_error(-EINVAL, "NUL byte in URL");
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (o + 1 >= out_len)
            return vs_error(-ENAMETOOLONG, "URL component too long");
        out[o++] = c;
    }
    if (out_len)
        out[o] = 0;
    return 0;
}

bool mgmt_http_query_get(const char *query, const char *key, char *out, size_t out_len)
{
    size_t klen = strlen(key);
    const char *p = query;
    while (p && *p) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len >= klen && !strncmp(p, key, klen) && (len == klen || p[klen] == '=')) {
            const char *v = len == klen ? p + len : p + klen + 1;
            size_t vlen = len == klen ? 0 : len - klen - 1;
            return mgmt_http_percent_decode(v, vlen, out, out_len) == 0;
        }
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* Find "\r\n\r\n" within the first max bytes; the head length including it, or 0. */
static size_t head_end(const char *buf, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
            return i + 4;
    return 0;
}

static int parse_request_line(const char *line, size_t len, struct mgmt_http_request *req, int *st)
{
    const char *sp1 = memchr(line, ' ', len);
    if (!sp1 || sp1 == line)
        return http_fail(st, 400, "malformed request line");
    size_t mlen = (size_t)(sp1 - line);
    if (mlen >= sizeof(req->method))
        return http_fail(st, 501, "method not implemented");
    for (size_t i = 0; i < mlen; i++)
        if (!isupper((unsigned char)line[i]))
            return http_fail(st, 400, "malformed method");
    memcpy(req->method, line, mlen);
    req->method[mlen] = 0;
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', len - mlen - 1);
    if (!sp2 || sp2 == target)
        return http_fail(st, 400, "malformed request line");
    size_t tlen = (size_t)(sp2 - target);
    size_t vlen = len - (size_t)(sp2 + 1 - line);
    const char *version = sp2 + 1;
    if (vlen != 8 || (memcmp(version, "HTTP/1.1", 8) && memcmp(version, "HTTP/1.0", 8)))
        return http_fail(st, 505, "HTTP version not supported");
    if (target[0] != '/')
        return http_fail(st, 400, "request target must be an absolute path");
    for (size_t i = 0; i < tlen; i++)
        if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] >= 0x7f)
            return http_fail(st, 400, "invalid character in request target");
    const char *q = memchr(target, '?', tlen);
    size_t plen = q ? (size_t)(q - target) : tlen;
    size_t qlen = q ? tlen - plen - 1 : 0;
    if (plen >= sizeof(req->path) || qlen >= sizeof(req->query))
        return http_fail(st, 414, "URI too long");
    if (mgmt_http_percent_decode(target, plen, req->path, sizeof(req->path)))
        return http_fail(st, 400, "bad escape in path");
    size_t dlen = strlen(req->path);
    if (strstr(req->path, "/../") || strstr(req->path, "/./") || strstr(req->path, "//") ||
        (dlen >= 3 && !strcmp(req->path + dlen - 3, "/..")) ||
        (dlen >= 2 && !strcmp(req->path + dlen - 2, "/.")))
        return http_fail(st, 400, "path not in canonical form");
    memcpy(req->query, q ? q + 1 : "", qlen);
    req->query[qlen] = 0;
    return 0;
}

int mgmt_http_parse_head(const char *buf, size_t len, struct mgmt_http_request *req,
                         int *http_status)
{
    int dummy;
    int *st = http_status ? http_status : &dummy;
    *st = 0;
    size_t scan = len < MGMT_HTTP_MAX_HEAD ? len : MGMT_HTTP_MAX_HEAD;
    size_t hlen = head_end(buf, scan);
    if (!hlen) {
        /* a bare LF line end would never complete: refuse it early */
        if (memchr(buf, '\n', scan) && (scan == 0 || buf[0] != '\r')) {
            const char *nl = memchr(buf, '\n', scan);
            if (nl == buf || nl[-1] != '\r')
                return http_fail(st, 400, "line not ended by CRLF");
        }
        if (memchr(buf, 0, scan))
            return http_fail(st, 400, "NUL byte in request head");
        if (len >= MGMT_HTTP_MAX_HEAD)
            return http_fail(st, 431, "request head too large");
        return 0;
    }
    memset(req, 0, sizeof(*req));
    req->head_len = hlen;
    if (memchr(buf, 0, hlen))
        return http_fail(st, 400, "NUL byte in request head");
    const char *p = buf, *end = buf + hlen - 2; /* up to the final CRLF */
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol || eol == p || eol[-1] != '\r')
        return http_fail(st, 400, "line not ended by CRLF");
    int err = parse_request_line(p, (size_t)(eol - 1 - p), req, st);
    if (err)
        return err;
    p = eol + 1;
    unsigned headers = 0;
    bool have_length = false;
    while (p < end) {
        eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol || eol == p || eol[-1] != '\r')
            return http_fail(st, 400, "line not ended by CRLF");
        size_t llen = (size_t)(eol - 1 - p);
        if (++headers > MGMT_HTTP_MAX_HEADERS)
            return http_fail(st, 431, "too many header fields");
        if (llen == 0 || p[0] == ' ' || p[0] == '\t')
            return http_fail(st, 400, "obsolete line folding");
        const char *colon = memchr(p, ':', llen);
        if (!colon || colon == p)
            return http_fail(st, 400, "malformed header field");
        for (const char *c = p; c < colon; c++)
            if (!is_tchar(*c))
                return http_fail(st, 400, "invalid header field name");
        const char *v = colon + 1, *vend = p + llen;
        while (v < vend && (*v == ' ' || *v == '\t'))
            v++;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        for (const char *c = v; c < vend; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t')
                return http_fail(st, 400, "control character in header value");
        size_t nlen = (size_t)(colon - p), vlen = (size_t)(vend - v);
        if (nlen == 14 && !strncasecmp(p, "Content-Length", 14)) {
            if (have_length)
                return http_fail(st, 400, "more than one Content-Length");
            have_length = true;
            if (vlen == 0 || vlen > 9)
                return vlen > 9 ? http_fail(st, 413, "request body too large")
                                : http_fail(st, 400, "empty Content-Length");
            size_t n = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (!isdigit((unsigned char)v[i]))
                    return http_fail(st, 400, "Content-Length is not a number");
                n = n * 10 + (size_t)(v[i] - '0');
            }
            if (n > MGMT_HTTP_MAX_BODY)
                return http_fail(st, 413, "request body too large");
            req->content_length = n;
            req->has_body = n > 0;
        } else if (nlen == 17 && !strncasecmp(p, "Transfer-Encoding", 17)) {
            return http_fail(st, 501, "Transfer-Encoding not supported; send Content-Length");
        } else if (nlen == 13 && !strncasecmp(p, "Authorization", 13)) {
            if (vlen >= sizeof(req->authorization))
                return http_fail(st, 431, "Authorization header too long");
            memcpy(req->authorization, v, vlen);
            req->authorization[vlen] = 0;
        } else if (nlen == 12 && !strncasecmp(p, "Content-Type", 12)) {
            if (vlen >= sizeof(req->content_type))
                return http_fail(st, 400, "Content-Type too long");
            memcpy(req->content_type, v, vlen);
            req->content_type[vlen] = 0;
        }
        p = eol + 1;
    }
    /* a request without Content-Length has no body (RFC 9112 6.3) */
    if (!strcmp(req->method, "GET") || !strcmp(req->method, "DELETE")) {
        if (req->content_length)
            return http_fail(st, 400, "unexpected request body");
    } else if (strcmp(req->method, "POST") && strcmp(req->method, "PUT")) {
        return http_fail(st, 405, "method not allowed");
    }
    return 1;
}

const char *mgmt_http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ---- client ---------------------------------------------------------------------------------- */

static char *client_cacert, *client_token;

int mgmt_client_set_tls(const char *cacert, const char *token)
{
    free(client_cacert);
    free(client_token);
    client_cacert = cacert ? strdup(cacert) : NULL;
    client_token = token ? strdup(token) : NULL;
    if ((cacert && !client_cacert) || (token && !client_token))
        return vs_error(-ENOMEM, "out of memory");
    return 0;
}

const char *mgmt_client_socket_path(const char *connect)
{
    static char def[512];
    if (connect && *connect)
        return strncmp(connect, "unix:", 5) ? connect : connect + 5;
    const char *env = getenv("VESSEL_SOCKET");
    if (env && *env)
        return strncmp(env, "unix:", 5) ? env : env + 5;
    snprintf(def, sizeof(def), "%s/%s", MGMT_DEFAULT_STATE_DIR, MGMT_SOCKET_NAME);
    return def;
}

int mgmt_unix_connect(const char *path, int flags)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Connect to target and send one request; the connection is left open for the response. */
static int client_send(const char *target, const char *method, const char *path,
                       const char *content_type, const char *body, size_t body_len,
                       struct mgmt_conn *c)
{
    c->fd = -1;
    c->ssl = NULL;
    c->need_token = false;
    char auth[300] = "";
    if (!strncmp(target, "tls:", 4)) {
        const char *token = client_token ? client_token : getenv("VESSEL_TOKEN");
        if (!token || !*token)
            return vs_error(-EACCES, "%s: a token is needed (VESSEL_TOKEN or --token-file)",
                            target);
        if (strlen(token) > 255 || strpbrk(token, "\r\n"))
            return vs_error(-EINVAL, "the token is too long or spans lines");
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", token);
        int err = mgmt_tls_connect(target + 4,
                                   client_cacert ? client_cacert : getenv("VESSEL_CACERT"), c);
        if (err)
            return err;
    } else {
        const char *socket_path = strncmp(target, "unix:", 5) ? target : target + 5;
        int fd = mgmt_unix_connect(socket_path, 0);
        if (fd == -ENAMETOOLONG)
            return vs_error(fd, "%s: socket path too long", socket_path);
        if (fd < 0)
            return vs_error_errno(fd,
                                  "%s: cannot reach vesseld (is it running? --connect or "
                                  "VESSEL_SOCKET name its socket)",
                                  socket_path);
        c->fd = fd;
    }
    char *head = vs_asprintf("%s %s HTTP/1.1\r\nHost: vesseld\r\nConnection: close\r\n%s"
                             "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                             method, path, auth, content_type ? content_type : "application/json",
                             body ? body_len : 0);
    int err = head ? mgmt_conn_write(c, head, strlen(head)) : -ENOMEM;
    free(head);
    if (!err && body && body_len)
        err = mgmt_conn_write(c, body, body_len);
    if (err) {
        mgmt_conn_close(c);
        return vs_error_errno(err, "%s: send", target);
    }
    return 0;
}

int mgmt_client_request(const char *target, const char *method, const char *path,
                        const char *content_type, const char *body, size_t body_len, int *status,
                        char **response, size_t *response_len)
{
    *response = NULL;
    *response_len = 0;
    struct mgmt_conn c;
    int err = client_send(target, method, path, content_type, body, body_len, &c);
    if (err)
        return err;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            mgmt_conn_close(&c);
            return vs_error(-ENOMEM, "out of memory");
        }
        if (len + 1 >= cap) {
            if (cap > (64u << 20)) {
                free(buf);
                mgmt_conn_close(&c);
                return vs_error(-EFBIG, "%s: response too large", target);
            }
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                free(buf);
            buf = bigger;
            cap *= 2;
            continue;
        }
        ssize_t n = mgmt_conn_read(&c, buf + len, cap - len - 1, -1);
        if (n < 0) {
            err = vs_error_errno((int)n, "%s: receive", target);
            free(buf);
            mgmt_conn_close(&c);
            return err;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    mgmt_conn_close(&c);
    buf[len] = 0;
    int code = 0;
    if (sscanf(buf, "HTTP/1.%*[01] %d", &code) != 1 || code < 100) {
        free(buf);
        return vs_error(-EPROTO, "%s: not an HTTP response", target);
    }
    char *body_start = strstr(buf, "\r\n\r\n");
    body_start = body_start ? body_start + 4 : buf + len;
    size_t blen = (size_t)(buf + len - body_start);
    memmove(buf, body_start, blen);
    buf[blen] = 0;
    *status = code;
    *response = buf;
    *response_len = blen;
    return 0;
}

int mgmt_client_stream(const char *target, const char *method, const char *path, int *status,
                       char **error_body, int (*line_fn)(void *arg, const char *line), void *arg)
{
    *status = 0;
    *error_body = NULL;
    struct mgmt_conn c;
    int err = client_send(target, method, path, NULL, NULL, 0, &c);
    if (err)
        return err;
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    bool in_body = false;
    while (buf) {
        if (len + 1 >= cap) {
            err = vs_error(-EMSGSIZE, "%s: line too long in the stream", target);
            break;
        }
        ssize_t n = mgmt_conn_read(&c, buf + len, cap - len - 1, -1);
        if (n < 0) {
            err = vs_error_errno((int)n, "%s: receive", target);
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        buf[len] = 0;
        if (!in_body) {
            char *end = strstr(buf, "\r\n\r\n");
            if (!end)
                continue;
            if (sscanf(buf, "HTTP/1.%*[01] %d", status) != 1 || *status < 100) {
                err = vs_error(-EPROTO, "%s: not an HTTP response", target);
                break;
            }
            in_body = true;
            size_t hl = (size_t)(end + 4 - buf);
            memmove(buf, buf + hl, len - hl + 1);
            len -= hl;
            if (*status < 200 || *status > 299)
                continue; /* collect the error body until EOF */
        }
        if (*status < 200 || *status > 299)
            continue;
        char *p = buf, *nl;
        int stop = 0;
        while (!stop && (nl = memchr(p, '\n', (size_t)(buf + len - p)))) {
            *nl = 0;
            if (nl > p)
                stop = line_fn(arg, p);
            p = nl + 1;
        }
        len = (size_t)(buf + len - p);
        memmove(buf, p, len);
        if (stop)
            break;
    }
    mgmt_conn_close(&c);
    if (!buf)
        return vs_error(-ENOMEM, "out of memory");
    if (!err && !in_body)
        err = vs_error(-EPROTO, "%s: connection closed before a response", target);
    if (!err && (*status < 200 || *status > 299)) {
        buf[len] = 0;
        *error_body = buf;
        return 0;
    }
    free(buf);
    return err;
}

/* ---- the VMM's control socket ---------------------------------------------------------------- */

int mgmt_vmm_command(const char *api_socket, const char *cmd, int timeout_ms, char **reply)
{
    char request[256];
    snprintf(request, sizeof(request), "{\"cmd\":\"%s\"}", cmd);
    return mgmt_vmm_request(api_socket, request, timeout_ms, reply);
}

int mgmt_vmm_request(const char *api_socket, const char *request, int timeout_ms, char **reply)
{
    *reply = NULL;
    /* the command's name for messages: the request is {"cmd":"NAME"…} */
    char cmd[32] = "request";
    const char *c = strstr(request, "\"cmd\":\"");
    if (c) {
        c += 7;
        size_t n = strcspn(c, "\"");
        snprintf(cmd, sizeof(cmd), "%.*s", (int)VS_MIN(n, sizeof(cmd) - 1), c);
    }
    int fd = mgmt_unix_connect(api_socket, 0);
    if (fd == -ENAMETOOLONG)
        return vs_error(fd, "%s: socket path too long", api_socket);
    if (fd < 0)
        return vs_error_errno(fd, "%s", api_socket);
    int err = write_all(fd, request, strlen(request));
    if (!err)
        err = write_all(fd, "\n", 1);
    size_t cap = 65536, len = 0;
    char *buf = err ? NULL : malloc(cap);
    if (!err && !buf)
        err = -ENOMEM;
    uint64_t deadline = vs_now_ns() + (uint64_t)timeout_ms * 1000000;
    while (!err) {
        uint64_t now = vs_now_ns();
        if (now >= deadline) {
            err = -ETIMEDOUT;
            break;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)((deadline - now) / 1000000) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            err = pr < 0 ? -errno : -ETIMEDOUT;
            break;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            err = r < 0 ? -errno : -ECONNRESET;
            break;
        }
        len += (size_t)r;
        if (memchr(buf, '\n', len))
            break;
        if (len + 1 >= cap) {
            err = -EMSGSIZE;
            break;
        }
    }
    close(fd);
    if (err) {
        free(buf);
        return vs_error_errno(err, "%s: %s", api_socket, cmd);
    }
    buf[len] = 0;
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = 0;
    *reply = buf;
    return 0;
}
