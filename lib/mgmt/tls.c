/*
 * lib/mgmt/tls.c — the API's byte streams: a connection is a socket, optionally wrapped in TLS
 * (OpenSSL), for both the daemon's TCP listener and the CLI's `--connect tls:HOST:PORT`.
 *
 * The idea: api.c and the client read and write through mgmt_conn_read/mgmt_conn_write and never
 * know whether TLS is there, so the strict HTTP handling is the same on every transport. TCP is
 * never plaintext: the daemon only builds a TCP listener together with a TLS context, and every
 * socket gets send/receive timeouts so a stalled peer cannot hold a thread inside OpenSSL.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mgmt/mgmt-internal.h"

/* The first queued OpenSSL error as text (for one-line messages). */
static const char *tls_error_text(void)
{
    static __thread char buf[256];
    unsigned long e = ERR_get_error();
    if (!e)
        return "TLS error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

void mgmt_socket_timeouts(int fd, int seconds)
{
    struct timeval tv = {.tv_sec = seconds};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

ssize_t mgmt_conn_read(struct mgmt_conn *c, void *buf, size_t len, int timeout_ms)
{
    if (len == 0)
        return 0;
    if (!c->ssl || SSL_pending(c->ssl) == 0) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int pr;
        do
            pr = poll(&p, 1, timeout_ms);
        while (pr < 0 && errno == EINTR);
        if (pr == 0)
            return -ETIMEDOUT;
        if (pr < 0)
            return -errno;
    }
    if (c->ssl) {
        int n = SSL_read(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
        if (n > 0)
            return n;
        int e = SSL_get_error(c->ssl, n);
        ERR_clear_error();
        return e == SSL_ERROR_ZERO_RETURN ? 0 : -ECONNRESET;
    }
    ssize_t n;
    do
        n = read(c->fd, buf, len);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

int mgmt_conn_write(struct mgmt_conn *c, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        if (c->ssl) {
            int n = SSL_write(c->ssl, p, len > INT_MAX ? INT_MAX : (int)len);
            if (n <= 0) {
                ERR_clear_error();
                return -EPIPE;
            }
            p += n;
            len -= (size_t)n;
            continue;
        }
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void mgmt_conn_close(struct mgmt_conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        ERR_clear_error();
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

int mgmt_tls_server_context(const char *cert, const char *key, SSL_CTX **out)
{
    *out = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return vs_error(-ENOMEM, "TLS: %s", tls_error_text());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        int err = vs_error(-EINVAL, "%s: cannot load TLS certificate: %s", cert, tls_error_text());
        SSL_CTX_free(ctx);
        return err;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        int err = vs_error(-EINVAL, "%s: cannot load TLS key (or it does not match %s): %s", key,
                           cert, tls_error_text());
        SSL_CTX_free(ctx);
        return err;
    }
    *out = ctx;
    return 0;
}

int mgmt_tls_accept(SSL_CTX *ctx, struct mgmt_conn *c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl)
        return vs_error(-ENOMEM, "TLS: %s", tls_error_text());
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_accept(c->ssl) != 1) {
        int err = vs_error(-EPROTO, "TLS handshake: %s", tls_error_text());
        SSL_free(c->ssl);
        c->ssl = NULL;
        return err;
    }
    return 0;
}

/* Split "HOST:PORT" or "[V6]:PORT". */
int mgmt_split_host_port(const char *spec, char *host, size_t host_len, char *port, size_t port_len)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1])
        return vs_error(-EINVAL, "%s: expected HOST:PORT", spec);
    const char *h = spec;
    size_t hl = (size_t)(colon - spec);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= host_len || strlen(colon + 1) >= port_len)
        return vs_error(-EINVAL, "%s: host or port too long", spec);
    memcpy(host, h, hl);
    host[hl] = 0;
    strcpy(port, colon + 1);
    return 0;
}

int mgmt_tcp_listen(const char *spec)
{
    char host[256], port[32];
    int err = mgmt_split_host_port(spec, host, sizeof(host), port, sizeof(port));
    if (err)
        return err;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc)
        return vs_error(-EINVAL, "%s: %s", spec, gai_strerror(rc));
    int fd = -1;
    err = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0)
            break;
        err = -errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return vs_error_errno(err, "tcp:%s", spec);
    return fd;
}

int mgmt_tls_connect(const char *spec, const char *cacert, struct mgmt_conn *c)
{
    c->fd = -1;
    c->ssl = NULL;
    char host[256], port[32];
    int err = mgmt_split_host_port(spec, host, sizeof(host), port, sizeof(port));
    if (err)
        return err;
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc)
        return vs_error(-EHOSTUNREACH, "%s: %s", spec, gai_strerror(rc));
    err = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai && c->fd < 0; ai = ai->ai_next) {
        c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            continue;
        mgmt_socket_timeouts(c->fd, 30);
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            err = -errno;
            close(c->fd);
            c->fd = -1;
        }
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        return vs_error_errno(err, "%s: cannot reach vesseld", spec);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        err = vs_error(-ENOMEM, "TLS: %s", tls_error_text());
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((cacert && *cacert) ? SSL_CTX_load_verify_locations(ctx, cacert, NULL) != 1
                            : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        err = vs_error(-EINVAL, "%s: cannot load CA certificates: %s", cacert ? cacert : "system",
                       tls_error_text());
        SSL_CTX_free(ctx);
        goto fail;
    }
    c->ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (!c->ssl) {
        err = vs_error(-ENOMEM, "TLS: %s", tls_error_text());
        goto fail;
    }
    /* verify the name we connected to: an IP address against IP SANs, else the host name */
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1
              : (SSL_set_tlsext_host_name(c->ssl, host) != 1 || SSL_set1_host(c->ssl, host) != 1)) {
        err = vs_error(-EINVAL, "%s: cannot set the name to verify", host);
        goto fail;
    }
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) {
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK)
            err = vs_error(-EPERM, "%s: server certificate not trusted: %s (--cacert names the CA)",
                           spec, X509_verify_cert_error_string(v));
        else
            err = vs_error(-EPROTO, "%s: TLS handshake failed: %s", spec, tls_error_text());
        goto fail;
    }
    return 0;
fail:
    ERR_clear_error();
    mgmt_conn_close(c);
    return err;
}
