/*
 * lib/mgmt/disklock.c — which running VM holds which disk: a disk a VM may write can't be given to
 * another running VM at all, and a disk others read can't be given to one that writes it.
 *
 * The idea: a claim is (device, inode) of the disk file, taken before vessel-vmm is spawned and
 * dropped when the VM is shut off, all under one daemon-wide mutex, so two racing starts of VMs
 * sharing a disk can't both pass the check. Files are compared by identity, not by name, so a
 * symlink or a second path to the same image is caught. Undo disks and read-only disks only read
 * the file; qcow2 backing files are not followed (overlays of one base are the point of them).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mgmt/mgmt-internal.h"

struct mgmt_disk_claim {
    dev_t dev;
    ino_t ino;
    bool writable;
    char vm[VM_DEF_NAME_MAX + 1];
    struct mgmt_disk_claim *next;
};

static bool disk_writable(const struct vm_disk *disk)
{
    return !disk->readonly && !disk->undo && disk->media != VM_DISK_MEDIA_CDROM;
}

int mgmt_disks_claim(struct mgmt_daemon *d, const char *vm, const struct vm_def *def, bool force)
{
    int err = 0;
    pthread_mutex_lock(&d->claims_lock);
    struct mgmt_disk_claim *added = NULL;
    for (size_t i = 0; i < def->disk_count && !err; i++) {
        const struct vm_disk *disk = &def->disks[i];
        struct stat st;
        if (!disk->file || stat(disk->file, &st) < 0)
            continue; /* a missing file fails later, at open, with its own message */
        bool writable = disk_writable(disk);
        for (struct mgmt_disk_claim *c = d->claims; c && !force; c = c->next) {
            if (c->dev != st.st_dev || c->ino != st.st_ino || !strcmp(c->vm, vm))
                continue;
            if (c->writable) {
                err = vs_error(-EBUSY, "%s: disk %s is in use writable by VM '%s'", vm, disk->file,
                               c->vm);
                break;
            }
            if (writable) {
                err = vs_error(-EBUSY,
                               "%s: disk %s is in use by VM '%s'; it can't be attached writable",
                               vm, disk->file, c->vm);
                break;
            }
        }
        if (err)
            break;
        struct mgmt_disk_claim *c = vs_calloc(1, sizeof(*c));
        if (!c) {
            err = -ENOMEM;
            break;
        }
        c->dev = st.st_dev;
        c->ino = st.st_ino;
        c->writable = writable;
        snprintf(c->vm, sizeof(c->vm), "%s", vm);
        c->next = added;
        added = c;
    }
    if (err) {
        while (added) {
            struct mgmt_disk_claim *next = added->next;
            free(added);
            added = next;
        }
    } else {
        while (added) {
            struct mgmt_disk_claim *next = added->next;
            added->next = d->claims;
            d->claims = added;
            added = next;
        }
    }
    pthread_mutex_unlock(&d->claims_lock);
    return err;
}

void mgmt_disks_release(struct mgmt_daemon *d, const char *vm)
{
    pthread_mutex_lock(&d->claims_lock);
    for (struct mgmt_disk_claim **p = &d->claims; *p;) {
        if (!strcmp((*p)->vm, vm)) {
            struct mgmt_disk_claim *gone = *p;
            *p = gone->next;
            free(gone);
        } else {
            p = &(*p)->next;
        }
    }
    pthread_mutex_unlock(&d->claims_lock);
}

void mgmt_disks_release_all(struct mgmt_daemon *d)
{
    pthread_mutex_lock(&d->claims_lock);
    while (d->claims) {
        struct mgmt_disk_claim *next = d->claims->next;
        free(d->claims);
        d->claims = next;
    }
    pthread_mutex_unlock(&d->claims_lock);
}

int mgmt_disks_claim_definition(struct mgmt_daemon *d, const char *vm, bool force)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, vm, &rec);
    if (err)
        return err;
    struct vm_def *def = NULL;
    err = vm_def_parse(rec.definition, strlen(rec.definition), vm, &def);
    mgmt_vm_record_free(&rec);
    if (!err)
        err = mgmt_disks_claim(d, vm, def, force);
    vm_def_free(def);
    return err;
}

bool mgmt_disks_holder(struct mgmt_daemon *d, const char *file, char *vm, size_t vm_len,
                       bool *writable)
{
    struct stat st;
    if (stat(file, &st) < 0)
        return false;
    bool found = false;
    pthread_mutex_lock(&d->claims_lock);
    for (struct mgmt_disk_claim *c = d->claims; c; c = c->next) {
        if (c->dev != st.st_dev || c->ino != st.st_ino)
            continue;
        /* a writer is the more useful name to report */
        if (!found || c->writable) {
            snprintf(vm, vm_len, "%s", c->vm);
            *writable = c->writable;
        }
        found = true;
    }
    pthread_mutex_unlock(&d->claims_lock);
    return found;
}
