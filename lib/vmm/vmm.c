/*
 * lib/vmm/vmm.c — the public face of the hypervisor: a VM that outlives its machines.
 *
 * struct vmm holds what must survive a guest reboot — the configuration, the console and the
 * control socket — while struct machine (kvm.c) is one boot of the board. A guest-initiated reset
 * throws the machine away and builds a fresh one from the same configuration, which restarts the
 * boot path exactly as a cold start would, with no per-device reset code to get wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

/* Build V from its config: consoles, the machine (from RESTORE when given), the API socket. */
/* A machine for V (from RESTORE, or booting), telling V's state eventfd of its pauses. */
static int vmm_machine_create(struct vmm *v, const struct vmstate_file *restore)
{
    int rc = machine_create(&v->machine, &v->config, v->console, v->vconsole, restore);
    if (rc == 0)
        v->machine->state_fd = v->state_fd;
    return rc;
}

static int vmm_build(struct vmm *v, const struct vmstate_file *restore)
{
    const struct vmm_config *config = &v->config;
    int rc = console_open(&v->console, config->console);
    if (rc == 0 && config->vconsole) {
        bool serial_stdio = !config->console || strcmp(config->console, "stdio") == 0;
        if (strcmp(config->vconsole, "stdio") == 0 && serial_stdio)
            rc = vs_error(-EINVAL, "--vconsole stdio: the serial console already uses stdio "
                                   "(give --console another backend)");
        else if (strcmp(config->vconsole, "none") == 0)
            rc = vs_error(-EINVAL, "--vconsole none: leave --vconsole out for no virtio console");
        else
            rc = console_open_as(&v->vconsole, config->vconsole, "--vconsole");
    }
    if (rc == 0 && (v->state_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        rc = vs_error_errno(-errno, "eventfd");
    if (rc == 0)
        rc = vmm_machine_create(v, restore);
    if (rc == 0 && config->api)
        rc = control_start(&v->control, v, config->api);
    return rc;
}

int vmm_create(struct vmm **out, const struct vmm_config *config)
{
    struct vmm *v = vs_calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->created_ns = vs_now_ns();
    v->state_fd = -1;
    v->config = *config;
    pthread_mutex_init(&v->machine_lock, NULL);
    int rc = vmm_build(v, NULL);
    if (rc < 0) {
        vmm_destroy(v);
        return rc;
    }
    *out = v;
    return 0;
}

int vmm_save(struct vmm *v, const char *path)
{
    pthread_mutex_lock(&v->machine_lock);
    struct machine *m = v->machine;
    int rc = !m ? vs_error(-EAGAIN, "the VM is rebooting") : 0;
    bool was_paused = false;
    if (rc == 0) {
        pthread_mutex_lock(&m->lock);
        was_paused = m->state == MACHINE_PAUSED;
        pthread_mutex_unlock(&m->lock);
        rc = machine_pause(m);
    }
    if (rc == 0 && (rc = machine_save(m, path)) == 0)
        machine_request_stop(m, VMM_EXIT_SAVED, 0, "saved");
    else if (m && !was_paused)
        machine_resume(m);
    pthread_mutex_unlock(&v->machine_lock);
    return rc;
}

/* Read and parse the state part of PATH (header, sections); *fd stays open for the RAM. */
static int state_file_open(const char *path, struct vmstate_file *f, int *fd)
{
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return vs_error_errno(-errno, "%s", path);
    struct stat st;
    if (fstat(*fd, &st) < 0)
        return vs_error_errno(-errno, "%s", path);
    if (!S_ISREG(st.st_mode))
        return vs_error(-EINVAL, "%s: not a regular file", path);
    uint8_t header[VMSTATE_HEADER_SIZE];
    size_t have = (size_t)VS_MIN((uint64_t)st.st_size, sizeof(header));
    uint64_t state_len;
    int rc;
    if ((rc = vs_pread_full(*fd, header, have, 0)) < 0)
        return vs_error_errno(rc, "%s", path);
    if ((rc = vmstate_header_parse(header, have, &state_len, path)) < 0)
        return rc;
    if (VMSTATE_HEADER_SIZE + state_len > (uint64_t)st.st_size)
        return vs_error(-EINVAL, "%s: truncated (%llu bytes, the state alone needs %llu)", path,
                        (unsigned long long)st.st_size,
                        (unsigned long long)(VMSTATE_HEADER_SIZE + state_len));
    size_t len = (size_t)(VMSTATE_HEADER_SIZE + state_len);
    uint8_t *buf = vs_malloc(len);
    if (!buf)
        return -ENOMEM;
    if ((rc = vs_pread_full(*fd, buf, len, 0)) < 0) {
        free(buf);
        return vs_error_errno(rc, "%s", path);
    }
    if ((rc = vmstate_parse(buf, len, f, path)) < 0)
        return rc;
    return vmstate_check_size(f, (uint64_t)st.st_size, path);
}

int vmm_state_file_identity(const char *path, struct vmm_state_identity *id)
{
    struct vmstate_file f;
    memset(&f, 0, sizeof(f));
    int fd = -1;
    int rc = state_file_open(path, &f, &fd);
    if (fd >= 0)
        close(fd);
    memset(id, 0, sizeof(*id));
    if (rc == 0) {
        snprintf(id->name, sizeof(id->name), "%s", f.cfg.config.name ? f.cfg.config.name : "");
        snprintf(id->uuid, sizeof(id->uuid), "%s", f.cfg.config.uuid ? f.cfg.config.uuid : "");
        snprintf(id->save_id, sizeof(id->save_id), "%s", f.cfg.save_id);
    }
    vmstate_file_free(&f);
    return rc;
}

int vmm_restore(struct vmm **out, const char *path, const struct vmm_restore_options *options)
{
    struct vmm *v = vs_calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->created_ns = vs_now_ns();
    v->state_fd = -1;
    pthread_mutex_init(&v->machine_lock, NULL);
    int fd = -1;
    int rc = (v->restored = vs_calloc(1, sizeof(*v->restored))) ? 0 : -ENOMEM;
    if (rc == 0)
        rc = state_file_open(path, v->restored, &fd);
    if (rc == 0) {
        v->config = v->restored->cfg.config;
        v->config.console = options->console;
        v->config.api = options->api;
        if (options->vconsole)
            v->config.vconsole = options->vconsole;
        rc = vmm_build(v, v->restored);
    }
    if (rc == 0)
        rc = machine_restore(v->machine, v->restored, fd, path);
    if (fd >= 0)
        close(fd);
    if (rc < 0) {
        vmm_destroy(v);
        return rc;
    }
    /* The status command shows how the saved VM had booted, marked as restored. */
    char *how = v->machine->boot.how;
    size_t room = sizeof(v->machine->boot.how);
    size_t n = (size_t)snprintf(how, room, "restored: ");
    snprintf(how + n, room - n, "%.*s", (int)(room - n - 1), v->restored->cfg.boot_how);
    *out = v;
    return 0;
}

int vmm_run(struct vmm *v, struct vmm_result *result)
{
    for (;;) {
        int rc = machine_run(v->machine, result);
        if (!v->first_output_ns)
            v->first_output_ns = v->machine->first_output_ns;
        if (rc < 0 || result->reason != VMM_EXIT_REBOOT || !v->config.restart_on_reboot)
            return rc;
        pthread_mutex_lock(&v->machine_lock);
        uint64_t ns;
        v->handled += machine_exit_handling(v->machine, &ns);
        v->handled_ns += ns;
        machine_destroy(v->machine);
        v->machine = NULL;
        rc = vmm_machine_create(v, NULL);
        pthread_mutex_unlock(&v->machine_lock);
        if (rc < 0)
            return vs_error_prefix(rc, "reboot");
    }
}

void vmm_destroy(struct vmm *v)
{
    if (!v)
        return;
    control_stop(v->control);
    machine_destroy(v->machine);
    if (v->state_fd >= 0)
        close(v->state_fd);
    console_close(v->console);
    if (v->vconsole)
        console_close(v->vconsole);
    pthread_mutex_destroy(&v->machine_lock);
    if (v->restored) {
        vmstate_file_free(v->restored);
        free(v->restored);
    }
    free(v);
}

int vmm_request(struct vmm *v, enum vmm_request request)
{
    pthread_mutex_lock(&v->machine_lock);
    struct machine *m = v->machine;
    int rc = 0;
    if (!m) {
        pthread_mutex_unlock(&v->machine_lock);
        return vs_error(-EAGAIN, "the VM is rebooting");
    }
    switch (request) {
    case VMM_REQUEST_PAUSE:
        rc = machine_pause(m);
        break;
    case VMM_REQUEST_RESUME:
        rc = machine_resume(m);
        break;
    case VMM_REQUEST_POWERBUTTON:
        pm_power_button(m);
        break;
    case VMM_REQUEST_POWEROFF:
        machine_request_stop(m, VMM_EXIT_POWEROFF, 0, "power off requested by the host");
        break;
    case VMM_REQUEST_RESET:
        machine_request_stop(m, VMM_EXIT_REBOOT, 0, "reset requested by the host");
        break;
    case VMM_REQUEST_CTRL_ALT_DEL:
        i8042_ctrl_alt_del(m);
        break;
    default:
        rc = vs_error(-EINVAL, "unknown request %d", (int)request);
    }
    pthread_mutex_unlock(&v->machine_lock);
    return rc;
}

int vmm_balloon_set_target(struct vmm *v, uint64_t pages)
{
    pthread_mutex_lock(&v->machine_lock);
    int rc = !v->machine ? vs_error(-EAGAIN, "the VM is rebooting")
             : pages > UINT32_MAX
                 ? vs_error(-EINVAL, "balloon: %llu pages is too many", (unsigned long long)pages)
                 : virtio_balloon_set_target(v->machine, (uint32_t)pages);
    pthread_mutex_unlock(&v->machine_lock);
    return rc;
}

const char *vmm_state_name(struct vmm *v)
{
    pthread_mutex_lock(&v->machine_lock);
    const char *name = "rebooting";
    if (v->machine) {
        pthread_mutex_lock(&v->machine->lock);
        name = v->machine->state == MACHINE_RUNNING  ? "running"
               : v->machine->state == MACHINE_PAUSED ? "paused"
                                                     : "stopping";
        pthread_mutex_unlock(&v->machine->lock);
    }
    pthread_mutex_unlock(&v->machine_lock);
    return name;
}

void vmm_pause_reason(struct vmm *v, char *buf, size_t size)
{
    pthread_mutex_lock(&v->machine_lock);
    if (v->machine)
        machine_pause_reason(v->machine, buf, size);
    else if (size)
        buf[0] = 0;
    pthread_mutex_unlock(&v->machine_lock);
}

const char *vmm_boot_description(struct vmm *v)
{
    return v->machine ? v->machine->boot.how : "";
}

uint64_t vmm_exit_handling(const struct vmm *v, uint64_t *ns)
{
    uint64_t n = v->handled, t = 0;
    *ns = v->handled_ns;
    if (v->machine) {
        n += machine_exit_handling(v->machine, &t);
        *ns += t;
    }
    return n;
}

double vmm_first_output_ms(const struct vmm *v)
{
    uint64_t t = v->first_output_ns;
    if (!t && v->machine)
        t = v->machine->first_output_ns;
    return t ? (double)(t - v->created_ns) / 1e6 : 0;
}
