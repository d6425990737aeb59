/*
 * lib/mgmt/hooks.c — event hooks: every executable in DIR/hooks/ runs as `HOOK VM EVENT DETAIL`
 * for each lifecycle event (started, stopped, paused, resumed, crashed, rebooted, poweroff,
 * reattached, host-disk-low …), with its output appended to DIR/log/hooks.log.
 *
 * The idea: the thread that commits an event only appends it to a queue; one worker runs the
 * hooks in event order, each in its own process group, and kills the group after the timeout. So a
 * slow or hanging hook delays later hooks, never an API call, and never outlives its timeout.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mgmt/mgmt-internal.h"

extern char **environ;

struct hook_item {
    char vm[65];
    char event[32];
    char detail[512];
    struct hook_item *next;
};

struct mgmt_hooks {
    char dir[PATH_MAX];
    char log[PATH_MAX];
    unsigned timeout_s;
    pthread_t worker;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct hook_item *head, *tail;
    size_t queued;
    bool stopping;
};

static void hooks_log(int fd, const char *msg)
{
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    dprintf(fd, "%s vesseld: %s\n", when, msg);
}

static int hook_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run one hook and wait for it, at most timeout_s seconds. */
static void hook_run(struct mgmt_hooks *h, int log_fd, const char *path, const struct hook_item *it)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, log_fd, 1);
    posix_spawn_file_actions_adddup2(&fa, log_fd, 2);
    /* its own process group, so a timeout kills what it started too; default signal mask */
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    /* SIGPIPE is ignored in the daemon; a hook gets the default */
    sigset_t deflt;
    sigemptyset(&deflt);
    sigaddset(&deflt, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &deflt);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    char *argv[] = {(char *)path, (char *)it->vm, (char *)it->event, (char *)it->detail, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc) {
        char msg[PATH_MAX + 128];
        snprintf(msg, sizeof(msg), "hook %.3000s: cannot run: %s", path, strerror(rc));
        hooks_log(log_fd, msg);
        return;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    uint64_t deadline = vs_now_ns() + (uint64_t)h->timeout_s * 1000000000ull;
    int status = 0;
    bool timed_out = false;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            break;
        uint64_t now = vs_now_ns();
        if (now >= deadline) {
            timed_out = true;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            break;
        }
        int ms = (int)((deadline - now) / 1000000) + 1;
        if (pidfd >= 0) {
            struct pollfd p = {.fd = pidfd, .events = POLLIN};
            poll(&p, 1, ms > 200 ? 200 : ms);
        } else {
            usleep(20000);
        }
    }
    if (pidfd >= 0)
        close(pidfd);
    char code[32];
    if (timed_out)
        snprintf(code, sizeof(code), "killed after %u s", h->timeout_s);
    else if (WIFEXITED(status))
        snprintf(code, sizeof(code), "exit %d", WEXITSTATUS(status));
    else
        snprintf(code, sizeof(code), "signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    char msg[PATH_MAX + 256];
    snprintf(msg, sizeof(msg), "hook %.3000s (%s %s): %s", path, it->vm, it->event, code);
    hooks_log(log_fd, msg);
}

static void hooks_run_all(struct mgmt_hooks *h, const struct hook_item *it)
{
    DIR *dir = opendir(h->dir);
    if (!dir)
        return; /* no hooks directory: nothing to run */
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.' || strchr(de->d_name, '~'))
            continue;
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            char **bigger = realloc(names, ncap * sizeof(*names));
            if (!bigger)
                break;
            names = bigger;
            cap = ncap;
        }
        if (!(names[count] = strdup(de->d_name)))
            break;
        count++;
    }
    closedir(dir);
    if (count)
        qsort(names, count, sizeof(*names), hook_name_cmp);
    int log_fd = count ? open(h->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : -1;
    for (size_t i = 0; i < count; i++) {
        char path[PATH_MAX * 2];
        snprintf(path, sizeof(path), "%s/%s", h->dir, names[i]);
        struct stat st;
        if (log_fd >= 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0)
            hook_run(h, log_fd, path, it);
        free(names[i]);
    }
    free(names);
    if (log_fd >= 0)
        close(log_fd);
}

static void *hooks_worker(void *arg)
{
    struct mgmt_hooks *h = arg;
    pthread_mutex_lock(&h->lock);
    for (;;) {
        while (!h->head && !h->stopping)
            pthread_cond_wait(&h->cond, &h->lock);
        if (!h->head)
            break;
        struct hook_item *it = h->head;
        h->head = it->next;
        if (!h->head)
            h->tail = NULL;
        h->queued--;
        pthread_mutex_unlock(&h->lock);
        hooks_run_all(h, it);
        free(it);
        pthread_mutex_lock(&h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

int mgmt_hooks_start(const char *state_dir, unsigned timeout_s, struct mgmt_hooks **out)
{
    *out = NULL;
    struct mgmt_hooks *h = vs_calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->timeout_s = timeout_s ? timeout_s : 10;
    snprintf(h->dir, sizeof(h->dir), "%s/hooks", state_dir);
    char logdir[PATH_MAX];
    snprintf(logdir, sizeof(logdir), "%s/log", state_dir);
    if (mkdir(logdir, 0700) < 0 && errno != EEXIST) {
        int err = vs_error_errno(-errno, "%s", logdir);
        free(h);
        return err;
    }
    if (snprintf(h->log, sizeof(h->log), "%s/log/hooks.log", state_dir) >= (int)sizeof(h->log)) {
        free(h);
        return vs_error(-ENAMETOOLONG, "%s: path too long", state_dir);
    }
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    if (pthread_create(&h->worker, NULL, hooks_worker, h)) {
        pthread_mutex_destroy(&h->lock);
        pthread_cond_destroy(&h->cond);
        free(h);
        return vs_error(-EAGAIN, "cannot start the hooks thread");
    }
    *out = h;
    return 0;
}

void mgmt_hooks_queue(struct mgmt_hooks *h, const char *vm, const char *event, const char *detail)
{
    if (!h)
        return;
    struct hook_item *it = calloc(1, sizeof(*it));
    if (!it)
        return;
    snprintf(it->vm, sizeof(it->vm), "%s", vm);
    snprintf(it->event, sizeof(it->event), "%s", event);
    snprintf(it->detail, sizeof(it->detail), "%s", detail ? detail : "");
    pthread_mutex_lock(&h->lock);
    if (h->queued >= 10000 || h->stopping) {
        /* a hook that hangs every time must not grow the queue without bound */
        pthread_mutex_unlock(&h->lock);
        free(it);
        return;
    }
    if (h->tail)
        h->tail->next = it;
    else
        h->head = it;
    h->tail = it;
    h->queued++;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

void mgmt_hooks_stop(struct mgmt_hooks *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    /* drop what has not started: the daemon is going away */
    for (struct hook_item *it = h->head, *next; it; it = next) {
        next = it->next;
        free(it);
    }
    h->head = h->tail = NULL;
    h->queued = 0;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->worker, NULL);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    free(h);
}
