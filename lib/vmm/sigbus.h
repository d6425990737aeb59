/*
 * lib/vmm/sigbus.h — reads from a mapped file that may shrink under us (a kernel being copied
 * over, a disk image truncated by someone else, an I/O error under a page) without dying of the
 * SIGBUS that follows.
 *
 * A thread guards such a read with SIGBUS_GUARDED; the one process-wide handler jumps back into
 * the guarded branch's else only when the faulting address lies inside the range that thread
 * guards. A SIGBUS anywhere else stays fatal.
 */
#ifndef VESSEL_VMM_SIGBUS_H
#define VESSEL_VMM_SIGBUS_H

#include <setjmp.h>
#include <stddef.h>

struct sigbus_guard {
    sigjmp_buf env;
    const char *lo, *hi;
};

/* Install the handler (once per process) and make G this thread's guard over [BASE, BASE+SIZE).
 * Use through SIGBUS_GUARDED. */
void sigbus_arm(struct sigbus_guard *g, const void *base, size_t size);
/* This thread's reads are unguarded again. */
void sigbus_disarm(void);

/* if (SIGBUS_GUARDED(g, base, size)) { …reads… } else { …a SIGBUS hit them… } sigbus_disarm();
 * Variables the first branch changes and the else reads must be volatile (setjmp rules). */
#define SIGBUS_GUARDED(g, base, size) (sigbus_arm(&(g), (base), (size)), sigsetjmp((g).env, 0) == 0)

#endif
