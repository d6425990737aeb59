/*
 * lib/util/progress.c — a one-line progress bar like qemu-img -p: "    (42.00/100%)" redrawn with
 * a carriage return, only when the value changes by 0.1 % so long copies don't flood a terminal.
 */
#include <unistd.h>

#include "vessel/util.h"

void vs_progress_init(struct vs_progress *p, bool enabled, FILE *out)
{
    p->enabled = enabled;
    p->last_permil = -1;
    p->out = out ? out : stdout;
}

void vs_progress_update(struct vs_progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled)
        return;
    int permil = total ? (int)((double)done * 1000.0 / (double)total) : 1000;
    if (permil > 1000)
        permil = 1000;
    if (permil == p->last_permil)
        return;
    p->last_permil = permil;
    fprintf(p->out, "\r    (%d.%d/100%%)", permil / 10, permil % 10);
    fflush(p->out);
}

void vs_progress_finish(struct vs_progress *p)
{
    if (!p->enabled)
        return;
    if (p->last_permil != 1000)
        fprintf(p->out, "\r    (100.0/100%%)");
    fprintf(p->out, "\n");
    fflush(p->out);
}
