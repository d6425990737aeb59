/*
 * lib/vmm/sigbus.c — the SIGBUS guard of sigbus.h: one handler for the process, a guard per
 * thread. The handler runs with SA_NODEFER, so jumping out of it leaves SIGBUS unblocked and the
 * next guarded read is protected the same way; the jump does not restore the signal mask
 * (sigsetjmp(…, 0)), which spares a system call per guarded read.
 */
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "vmm/sigbus.h"

static __thread struct sigbus_guard *current;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void handler(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    struct sigbus_guard *g = current;
    const char *a = si->si_addr;
    if (g && a >= g->lo && a < g->hi) {
        current = NULL;
        siglongjmp(g->env, 1);
    }
    /* Not a read we guard: back to the default, and the faulting access, run again, kills. */
    signal(sig, SIG_DFL);
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

void sigbus_arm(struct sigbus_guard *g, const void *base, size_t size)
{
    pthread_once(&once, install);
    g->lo = base;
    g->hi = (const char *)base + size;
    current = g;
}

void sigbus_disarm(void)
{
    current = NULL;
}
