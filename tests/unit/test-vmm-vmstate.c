/*
 * tests/unit/test-vmm-vmstate.c — the saved-VM state file format without KVM: a configuration
 * written and parsed back is the same machine (disks, NICs, flags, strings), the reader latches
 * on the first short field, and a file cut at every length before its end is refused with a
 * message rather than read past.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "vmm/vmstate.h"

/* A whole state (header + config section + one small device section) for CONFIG. CUT: bytes to
 * drop from the config section's end (a file written before the VM identity was added). */
static uint8_t *build_state_cut(const struct vmm_config *config, const uint64_t *sizes, size_t cut,
                                size_t *len)
{
    struct vmstate_writer w = {0};
    size_t mark = vmw_section_begin(&w, "config");
    vmstate_config_write(&w, config, sizes, "PVH entry 0x100020",
                         "00ff00ff00ff00ff00ff00ff00ff00ff");
    w.len -= cut;
    vmw_section_end(&w, mark);
    mark = vmw_section_begin(&w, "serial");
    vmw_u32(&w, 0xdeadbeef);
    vmw_section_end(&w, mark);
    uint8_t *buf = malloc(VMSTATE_HEADER_SIZE + w.len);
    vmstate_header_write(buf, config->memory, config->cpus, 2, w.len,
                         VS_ALIGN_UP(VMSTATE_HEADER_SIZE + w.len, 4096));
    memcpy(buf + VMSTATE_HEADER_SIZE, w.buf, w.len);
    *len = VMSTATE_HEADER_SIZE + w.len;
    vmw_free(&w);
    return buf;
}

static uint8_t *build_state(const struct vmm_config *config, const uint64_t *sizes, size_t *len)
{
    return build_state_cut(config, sizes, 0, len);
}

static const struct vmm_disk_config disks[] = {
    {"/images/a.raw", "raw", false, 500, 10 << 20},
    {"/images/b.qcow2", NULL, true, 0, 0},
};
static const struct vmm_net_config nets[] = {
    {"tap-x", {0x52, 0x54, 0, 1, 2, 3}, true},
};
static const uint64_t sizes[] = {32 << 20, 1ULL << 40};

static struct vmm_config sample_config(void)
{
    return (struct vmm_config){
        .kernel = "/boot/probe.elf",
        .cmdline = "probe.mode=idle",
        .cpus = 2,
        .memory = 128 << 20,
        .restart_on_reboot = true,
        .disks = (struct vmm_disk_config *)disks,
        .disk_count = 2,
        .nets = (struct vmm_net_config *)nets,
        .net_count = 1,
        .rng = true,
        .vconsole = "unix:/run/vc.sock",
        .name = "web1",
        .uuid = "6f1e0c2a-0000-4000-8000-000000000001",
    };
}

TEST(vmstate_config_round_trip)
{
    struct vmm_config c = sample_config();
    size_t len;
    uint8_t *buf = build_state(&c, sizes, &len);
    struct vmstate_file f;
    CHECK_OK(vmstate_parse(buf, len, &f, "t.save"));
    const struct vmm_config *g = &f.cfg.config;
    CHECK(f.vcpus == 2 && f.memory == 128 << 20 && f.section_count == 2);
    CHECK(f.ram_offset == 4096);
    CHECK(strcmp(g->kernel, "/boot/probe.elf") == 0 && g->initrd == NULL);
    CHECK(strcmp(g->cmdline, "probe.mode=idle") == 0);
    CHECK(g->restart_on_reboot && g->rng && !g->balloon && !g->hugepages);
    CHECK(strcmp(g->vconsole, "unix:/run/vc.sock") == 0);
    CHECK(g->disk_count == 2 && strcmp(g->disks[1].path, "/images/b.qcow2") == 0);
    CHECK(g->disks[1].format == NULL && g->disks[1].readonly && !g->disks[0].readonly);
    CHECK(strcmp(g->disks[0].format, "raw") == 0);
    CHECK(f.cfg.disk_sizes[1] == 1ULL << 40);
    CHECK(g->net_count == 1 && strcmp(g->nets[0].tap, "tap-x") == 0 && g->nets[0].mac[5] == 3);
    CHECK(strcmp(f.cfg.boot_how, "PVH entry 0x100020") == 0);
    CHECK(!strcmp(g->name, "web1") && !strcmp(g->uuid, "6f1e0c2a-0000-4000-8000-000000000001"));
    CHECK(!strcmp(f.cfg.save_id, "00ff00ff00ff00ff00ff00ff00ff00ff"));
    CHECK(g->disks[0].iops == 500 && g->disks[0].bps == 10 << 20 && !g->disks[1].iops);
    const struct vmstate_section *s = vmstate_find(&f, "serial", 0);
    CHECK(s && s->len == 4);
    CHECK(vmstate_find(&f, "serial", 1) == NULL);
    CHECK(vmstate_check_size(&f, 4096 + (128 << 20), "t.save") == 0);
    CHECK(vmstate_check_size(&f, 4096 + (64 << 20), "t.save") < 0);
    CHECK(strstr(vs_error_message(), "truncated") != NULL);
    vmstate_file_free(&f);
}

/* A file from before the VM identity (name, uuid, save id) still parses, with none. */
TEST(vmstate_without_identity)
{
    struct vmm_config c = sample_config();
    size_t len;
    uint8_t *buf = build_state_cut(&c, sizes, (4 + 4) + (4 + 36) + (4 + 32) + (4 + 2 * 16), &len);
    struct vmstate_file f;
    CHECK_OK(vmstate_parse(buf, len, &f, "old.save"));
    CHECK(f.cfg.config.name == NULL && f.cfg.config.uuid == NULL && f.cfg.save_id[0] == 0);
    CHECK(f.cfg.config.net_count == 1 && strcmp(f.cfg.config.nets[0].tap, "tap-x") == 0);
    vmstate_file_free(&f); /* frees buf: the file owns its state */
    /* cut inside the identity: refused, not half-read */
    buf = build_state_cut(&c, sizes, 10, &len);
    CHECK(vmstate_parse(buf, len, &f, "half.save") < 0);
    vmstate_file_free(&f);
}

TEST(vmstate_every_cut_is_refused)
{
    struct vmm_config c = sample_config();
    size_t len;
    uint8_t *whole = build_state(&c, sizes, &len);
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *buf = malloc(cut ? cut : 1);
        memcpy(buf, whole, cut);
        struct vmstate_file f;
        CHECK(vmstate_parse(buf, cut, &f, "cut.save") < 0);
        CHECK(strstr(vs_error_message(), "cut.save") != NULL);
        vmstate_file_free(&f);
    }
    free(whole);
}

TEST(vmstate_header_checks)
{
    struct vmm_config c = sample_config();
    size_t len;
    uint8_t *buf = build_state(&c, sizes, &len);
    uint64_t state_len;
    CHECK_OK(vmstate_header_parse(buf, len, &state_len, "h.save"));
    CHECK(state_len == len - VMSTATE_HEADER_SIZE);
    buf[8] = 2; /* version */
    CHECK(vmstate_header_parse(buf, len, &state_len, "h.save") < 0);
    CHECK(strstr(vs_error_message(), "version 2") != NULL);
    buf[8] = 1;
    buf[0] = 'X';
    CHECK(vmstate_header_parse(buf, len, &state_len, "h.save") < 0);
    CHECK(strstr(vs_error_message(), "magic") != NULL);
    buf[0] = 'V';
    buf[24] = 0; /* vCPUs */
    CHECK(vmstate_header_parse(buf, len, &state_len, "h.save") < 0);
    buf[24] = 3; /* header says 3 vCPUs, the configuration 2 */
    struct vmstate_file f;
    CHECK(vmstate_parse(buf, len, &f, "h.save") < 0);
    CHECK(strstr(vs_error_message(), "disagrees") != NULL);
    vmstate_file_free(&f);
}

TEST(vmstate_reader_latches)
{
    uint8_t bytes[5] = {1, 2, 3, 4, 5};
    struct vmstate_reader r;
    vmr_init(&r, bytes, sizeof(bytes), "r");
    CHECK(vmr_u32(&r) == 0x04030201);
    CHECK(vmr_u16(&r) == 0 && r.failed); /* only one byte left */
    CHECK(vmr_u8(&r) == 0);              /* stays failed */
    CHECK(vmr_finish(&r) < 0);
    vmr_init(&r, bytes, 1, "r");
    CHECK(vmr_bool(&r) && !r.failed); /* 1 is true... */
    vmr_init(&r, (uint8_t[]){2}, 1, "r");
    vmr_bool(&r);
    CHECK(r.failed); /* ...2 is not a bool */
    uint8_t str[] = {0xff, 0xff, 0xff, 0x7f};
    char *s;
    vmr_init(&r, str, sizeof(str), "r");
    CHECK(!vmr_str(&r, &s) && s == NULL); /* a length far past the end */
}
