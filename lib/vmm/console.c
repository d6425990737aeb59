/*
 * lib/vmm/console.c — where the guest's serial console goes: stdio, a file, a pty or a unix
 * socket, with input for all but the file.
 *
 * One idea: the console is a byte pipe with a reader thread. Output is written synchronously by
 * the device (dropped rather than blocking a vCPU when a pty or socket peer is slow or absent);
 * input is read by the console's own thread and pushed to the device through a callback. The
 * thread polls a wake pipe too, so closing never waits on a read.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "vmm/machine.h"

enum console_kind { CONSOLE_NONE, CONSOLE_STDIO, CONSOLE_FILE, CONSOLE_PTY, CONSOLE_UNIX };

struct console {
    enum console_kind kind;
    int out_fd, in_fd;
    int listen_fd, client_fd;
    int wake[2];
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;       /* fds; taken by console_write (under the device's lock) */
    pthread_mutex_t input_lock; /* the callback; held while calling it, never inside lock */
    void (*input)(void *opaque, const uint8_t *buf, size_t len);
    void *opaque;
    struct termios saved_tty;
    bool restore_tty;
    char *path;
};

static void set_raw(int fd, struct termios *saved, bool keep_signals)
{
    struct termios t;
    if (tcgetattr(fd, &t) < 0)
        return;
    if (saved)
        *saved = t;
    cfmakeraw(&t);
    if (keep_signals)
        t.c_lflag |= ISIG;
    t.c_oflag |= OPOST | ONLCR; /* keep the host terminal's newline handling */
    tcsetattr(fd, TCSANOW, &t);
}

static void *console_thread(void *arg)
{
    struct console *c = arg;
    uint8_t buf[512];
    pthread_setname_np(pthread_self(), "console");
    for (;;) {
        struct pollfd p[3] = {{c->wake[0], POLLIN, 0}};
        int n = 1;
        pthread_mutex_lock(&c->lock);
        int in = c->kind == CONSOLE_UNIX ? c->client_fd : c->in_fd;
        pthread_mutex_unlock(&c->lock);
        if (in >= 0)
            p[n++] = (struct pollfd){in, POLLIN, 0};
        if (c->kind == CONSOLE_UNIX && c->client_fd < 0)
            p[n++] = (struct pollfd){c->listen_fd, POLLIN, 0};
        if (poll(p, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents)
            break;
        for (int i = 1; i < n; i++) {
            if (!p[i].revents)
                continue;
            if (p[i].fd == c->listen_fd) {
                int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd >= 0) {
                    pthread_mutex_lock(&c->lock);
                    c->client_fd = fd;
                    pthread_mutex_unlock(&c->lock);
                }
                continue;
            }
            ssize_t r = read(p[i].fd, buf, sizeof(buf));
            if (r > 0) {
                pthread_mutex_lock(&c->input_lock);
                if (c->input)
                    c->input(c->opaque, buf, (size_t)r);
                pthread_mutex_unlock(&c->input_lock);
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                pthread_mutex_lock(&c->lock);
                if (c->kind == CONSOLE_UNIX) {
                    close(c->client_fd);
                    c->client_fd = -1; /* wait for the next client */
                } else if (c->kind == CONSOLE_STDIO) {
                    c->in_fd = -1; /* stdin closed: output only from now on */
                } else if (c->kind == CONSOLE_PTY && r < 0 && errno == EIO) {
                    pthread_mutex_unlock(&c->lock);
                    usleep(100000); /* no slave open yet */
                    continue;
                }
                pthread_mutex_unlock(&c->lock);
            }
        }
    }
    return NULL;
}

int console_open(struct console **out, const char *spec)
{
    return console_open_as(out, spec, "--console");
}

int console_open_as(struct console **out, const char *spec, const char *flag)
{
    struct console *c = vs_calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->out_fd = c->in_fd = c->listen_fd = c->client_fd = -1;
    c->wake[0] = c->wake[1] = -1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->input_lock, NULL);
    int rc = 0;
    if (!spec || strcmp(spec, "stdio") == 0) {
        c->kind = CONSOLE_STDIO;
        c->out_fd = STDOUT_FILENO;
        c->in_fd = STDIN_FILENO;
        if (isatty(STDIN_FILENO)) {
            set_raw(STDIN_FILENO, &c->saved_tty, true);
            c->restore_tty = true;
        }
    } else if (strcmp(spec, "none") == 0) {
        c->kind = CONSOLE_NONE;
    } else if (strncmp(spec, "file:", 5) == 0) {
        c->kind = CONSOLE_FILE;
        c->out_fd = open(spec + 5, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (c->out_fd < 0)
            rc = vs_error_errno(-errno, "%s %s", flag, spec);
    } else if (strcmp(spec, "pty") == 0) {
        c->kind = CONSOLE_PTY;
        int fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0 || grantpt(fd) < 0 || unlockpt(fd) < 0) {
            rc = vs_error_errno(-errno, "%s pty: cannot allocate a pty", flag);
            if (fd >= 0)
                close(fd);
        } else {
            c->out_fd = c->in_fd = fd;
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            c->path = vs_strdup(ptsname(fd));
            int slave = open(c->path, O_RDWR | O_NOCTTY);
            if (slave >= 0) {
                set_raw(slave, NULL, false);
                close(slave);
            }
            fprintf(stderr, "vessel-vmm: console on %s\n", c->path);
        }
    } else if (strncmp(spec, "unix:", 5) == 0) {
        c->kind = CONSOLE_UNIX;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(spec + 5) >= sizeof(sa.sun_path)) {
            rc = vs_error(-ENAMETOOLONG, "%s %s: socket path too long", flag, spec);
        } else {
            strcpy(sa.sun_path, spec + 5);
            unlink(sa.sun_path);
            c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (c->listen_fd < 0 || bind(c->listen_fd, (void *)&sa, sizeof(sa)) < 0 ||
                listen(c->listen_fd, 1) < 0)
                rc = vs_error_errno(-errno, "%s %s", flag, spec);
            else
                c->path = vs_strdup(sa.sun_path);
        }
    } else {
        rc = vs_error(-EINVAL, "%s '%s': expected stdio, file:PATH, pty, unix:PATH or none", flag,
                      spec);
    }
    if (rc == 0 && c->kind != CONSOLE_NONE && c->kind != CONSOLE_FILE) {
        if (pipe2(c->wake, O_CLOEXEC) < 0) {
            rc = vs_error_errno(-errno, "console: pipe");
        } else {
            int e = pthread_create(&c->thread, NULL, console_thread, c);
            if (e)
                rc = vs_error(-e, "console: cannot start its thread");
            else
                c->thread_started = true;
        }
    }
    if (rc < 0) {
        console_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void console_set_input(struct console *c, void (*fn)(void *, const uint8_t *, size_t), void *opaque)
{
    pthread_mutex_lock(&c->input_lock);
    c->input = fn;
    c->opaque = opaque;
    pthread_mutex_unlock(&c->input_lock);
}

void console_write(struct console *c, const uint8_t *buf, size_t len)
{
    pthread_mutex_lock(&c->lock);
    int fd = c->kind == CONSOLE_UNIX ? c->client_fd : c->out_fd;
    while (fd >= 0 && len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* slow or gone peer: drop, never stall the vCPU */
        buf += n;
        len -= (size_t)n;
    }
    pthread_mutex_unlock(&c->lock);
}

bool console_can_write(struct console *c)
{
    pthread_mutex_lock(&c->lock);
    bool ok = c->kind != CONSOLE_UNIX || c->client_fd >= 0;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

void console_close(struct console *c)
{
    if (!c)
        return;
    if (c->thread_started) {
        if (write(c->wake[1], "x", 1) < 0) {
            /* the thread also exits when the pipe closes */
        }
        pthread_join(c->thread, NULL);
    }
    if (c->restore_tty)
        tcsetattr(STDIN_FILENO, TCSANOW, &c->saved_tty);
    if (c->kind == CONSOLE_FILE || c->kind == CONSOLE_PTY)
        close(c->out_fd);
    if (c->client_fd >= 0)
        close(c->client_fd);
    if (c->listen_fd >= 0) {
        close(c->listen_fd);
        if (c->path)
            unlink(c->path);
    }
    for (int i = 0; i < 2; i++)
        if (c->wake[i] >= 0)
            close(c->wake[i]);
    free(c->path);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->input_lock);
    free(c);
}
